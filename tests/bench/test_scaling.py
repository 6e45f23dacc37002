"""`hpc-dl bench scaling`: the efficiency arithmetic, and real local sweeps (torchrun, gloo)."""

import csv
import json

import matplotlib.image
import pytest

from hpc_dl.bench import scaling
from hpc_dl.bench.scaling import Point
from hpc_dl.errors import UserError
from tests.conftest import CONFIGS, run_cli
from tests.telemetry.test_wandb import inspect

MLP = [CONFIGS / "breast_cancer_mlp.yaml", "train.steps=40", "log.every=5", "train.eval_every=0", "log.plots=false"]


def test_weak_scaling_worked_example():
    # 1 device: 100 samples/s; 4 devices with the same per-device batch: 360 samples/s.
    speedup, efficiency = scaling.speedup_efficiency(4, 360.0, 1, 100.0)
    assert speedup == pytest.approx(3.6) and efficiency == pytest.approx(0.9)
    assert efficiency == pytest.approx((360 / 4) / (100 / 1))  # the per-device throughput ratio


def test_strong_scaling_worked_example():
    # global batch 256: 1.0 s per step on 2 devices, 0.3 s on 8 devices.
    t_base, t = 1.0, 0.3
    speedup, efficiency = scaling.speedup_efficiency(8, 256 / t, 2, 256 / t_base)
    assert speedup == pytest.approx(t_base / t) == pytest.approx(3.3333, rel=1e-4)
    assert efficiency == pytest.approx(t_base * 2 / (t * 8)) == pytest.approx(0.8333, rel=1e-4)


def test_points_and_batches():
    assert scaling.parse_points("2x4, 1x1,1x2") == [Point(1, 1), Point(1, 2), Point(2, 4)]
    assert scaling.parse_points("1,2,4", procs_per_node=8) == [Point(1, 8), Point(2, 8), Point(4, 8)]
    for bad in ("1x", "0x2", "ax2", "1x1,1x1", ""):
        with pytest.raises(UserError, match="--points"):
            scaling.parse_points(bad)
    points = [Point(1, 1), Point(1, 2), Point(1, 4)]
    assert set(scaling.per_device_batch("weak", points, 32, None).values()) == {32}
    assert list(scaling.per_device_batch("strong", points, 32, None).values()) == [32, 16, 8]
    assert list(scaling.per_device_batch("strong", points, 32, 64).values()) == [64, 32, 16]
    with pytest.raises(UserError, match="global batch 30 does not split evenly .* 1x4"):
        scaling.per_device_batch("strong", points, 32, 30)


def test_a_failed_smallest_point_moves_the_base_and_stays_in_the_table():
    rows = [
        {"point": "1x1", "nodes": 1, "devices": 1, "status": "failed", "samples_per_s": None},
        {"point": "1x2", "nodes": 1, "devices": 2, "status": "ok", "samples_per_s": 200.0},
        {"point": "1x4", "nodes": 1, "devices": 4, "status": "ok", "samples_per_s": 300.0},
    ]
    base = scaling.analyse(rows)
    assert base["point"] == "1x2" and rows[2]["efficiency"] == pytest.approx(0.75)
    assert rows[0]["efficiency"] is None and rows[0]["ideal_speedup"] == 0.5


def test_scaling_plot_says_nodes_as_well_as_devices():
    rows = [{"point": f"{n}x8", "nodes": n, "devices": 8 * n, "status": "ok", "samples_per_s": 900.0 * n}
            for n in (1, 2, 4)]  # fmt: skip
    report = {"points": rows, "base": scaling.analyse(rows)["point"], "mode": "weak", "sweep": "s"}
    for ax in scaling.figure(report).axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["8\n1 node", "16\n2 nodes", "32\n4 nodes"], labels
        assert "nodes" in ax.get_xlabel()


@pytest.fixture(scope="module")
def weak_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "weak-mlp"
    proc = run_cli("bench", "scaling", *MLP, "--mode", "weak", "--points", "1x1,1x2", "--out", out,
                   env={"WANDB_MODE": "offline"}, timeout=600)  # fmt: skip
    return out, proc


@pytest.mark.slow
def test_local_weak_sweep_writes_the_full_report(weak_sweep):
    out, proc = weak_sweep
    report = json.loads((out / "scaling.json").read_text())
    assert report["mode"] == "weak" and report["base"] == "1x1" and report["manifest"]["torch"]
    one, two = report["points"]
    assert (one["devices"], two["devices"]) == (1, 2) and one["status"] == two["status"] == "ok"
    assert one["batch_per_device"] == two["batch_per_device"] == 32 and two["global_batch"] == 64
    assert one["speedup"] == one["efficiency"] == 1.0
    assert two["efficiency"] == pytest.approx(two["samples_per_s"] / 2 / one["samples_per_s"])
    for r in (one, two):
        summary = json.loads((out / f"weak-mlp-{r['point']}" / "summary.json").read_text())
        assert summary["world_size"] == r["devices"] and summary["steps"] == 40
        assert r["samples_per_s"] == summary["throughput"]["samples_per_s"] > 0
        assert r["step_s"] > 0 and r["compute_s"] > 0 and r["data_s"] >= 0 and r["optimizer_s"] > 0
        assert r["step_s"] == pytest.approx(r["batch_per_device"] / (r["samples_per_s"] / r["devices"]), rel=0.5)
    assert one["allreduce_busbw_gbs"] is None and two["allreduce_busbw_gbs"] > 0  # preflight, 2 ranks only
    assert two["comm_s"] > 0 and two["grad_busbw_gbs"] > 0
    with open(out / "scaling.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["point"] for t in table] == ["1x1", "1x2"] and float(table[1]["efficiency"]) == two["efficiency"]
    md = (out / "scaling.md").read_text()
    assert "| 1x2 | 2 | ok |" in md and md in proc.stdout
    assert matplotlib.image.imread(out / "scaling.png").shape[1] > 500


@pytest.mark.slow
def test_sweep_is_one_wandb_group_with_a_summary_run(weak_sweep):
    out, _ = weak_sweep
    for point in ("1x1", "1x2"):
        run = inspect(out / f"weak-mlp-{point}", summary=True)
        assert run["config"]["log"]["wandb_group"] == "weak-mlp" and run["name"] == f"weak-mlp-{point}"
    report = inspect(out, summary=True)
    assert report["name"] == "weak-mlp" and report["state"] == "finished"
    assert report["config"]["log"]["wandb_group"] == "weak-mlp"
    assert report["config"]["log"]["wandb_job_type"] == "scaling-report"
    efficiency = json.loads((out / "scaling.json").read_text())["points"][1]["efficiency"]
    assert report["summary"]["scaling/efficiency/1x2"] == pytest.approx(efficiency)


@pytest.mark.slow
def test_projection_overlays_the_measured_sweep(weak_sweep, tmp_path):
    out, _ = weak_sweep
    proc = run_cli("bench", "project", "--measured", out / "scaling.json", "--nodes", "1,2,4", "--intra", "2:300",
                   "--inter", "tcp", "--out", tmp_path)  # fmt: skip
    result = json.loads((tmp_path / "projection.json").read_text())
    measured = json.loads((out / "scaling.json").read_text())["points"]
    assert [r["point"] for r in result["rows"]] == ["1x1", "1x2", "2x2", "4x2"]  # the sweep's 2 per node
    overlay = {m["point"]: m for m in result["measured"]}
    assert overlay["1x1"]["predicted_efficiency"] == 1.0 == overlay["1x1"]["measured_efficiency"]
    assert overlay["1x2"]["measured_efficiency"] == measured[1]["efficiency"]
    assert overlay["1x2"]["error"] == pytest.approx(overlay["1x2"]["predicted_efficiency"] - measured[1]["efficiency"])
    base_rate = result["workload"]["tflops_per_device"]  # the base point's achieved rate
    assert result["rows"][0]["step_s"] == pytest.approx(32 * result["workload"]["flops_per_sample"] / base_rate / 1e12)
    assert "measured points against the model" in proc.stdout
    assert matplotlib.image.imread(tmp_path / "projection.png").shape[1] > 500


@pytest.mark.slow
def test_local_strong_sweep_splits_the_global_batch(tmp_path):
    out = tmp_path / "strong"
    run_cli("bench", "scaling", *MLP, "--mode", "strong", "--points", "1x1,1x2", "--global-batch", "64",
            "--out", out, timeout=600)  # fmt: skip
    report = json.loads((out / "scaling.json").read_text())
    one, two = report["points"]
    assert (one["batch_per_device"], two["batch_per_device"]) == (64, 32)
    assert one["global_batch"] == two["global_batch"] == 64
    assert two["speedup"] == pytest.approx(two["samples_per_s"] / one["samples_per_s"])
    assert two["efficiency"] == pytest.approx(two["speedup"] / 2)
    assert (out / "scaling.png").exists() and (out / "scaling.md").exists()


@pytest.mark.slow
def test_a_point_that_runs_out_of_time_is_reported_not_dropped(tmp_path):
    out = tmp_path / "late"
    proc = run_cli("bench", "scaling", *MLP, "train.steps=1000000", "--mode", "weak", "--points", "1x1",
                   "--timeout-min", "0.05", "--out", out, check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and "1 of 1 point(s) did not complete: 1x1" in proc.stderr
    (row,) = json.loads((out / "scaling.json").read_text())["points"]
    assert row["status"] == "timeout" and "still running after 3 s" in row["reason"] and row["efficiency"] is None
    assert "**timeout**" in (out / "scaling.md").read_text() and (out / "scaling.png").exists()
