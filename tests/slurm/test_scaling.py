"""`hpc-dl bench scaling --launcher slurm`: every point an exclusive Slurm job on the two-node test
cluster (tasks bound to cores; see tests/slurm/cluster.py)."""

import json

import pytest

from tests.conftest import CONFIGS, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_two_point_sweep_on_the_cluster(slurm, tmp_path):
    out = tmp_path / "nodes"
    proc = run_cli("bench", "scaling", CONFIGS / "breast_cancer_mlp.yaml", "train.steps=40", "log.every=5",
                   "train.eval_every=0", "log.plots=false", "slurm.cpus_per_task=1", "--mode", "weak",
                   "--points", "1x1,2x1", "--launcher", "slurm", "--timeout-min", "15", "--out", out,
                   cwd=tmp_path, timeout=900)  # fmt: skip
    report = json.loads((out / "scaling.json").read_text())
    one, two = report["points"]
    assert report["launcher"] == "slurm" and one["status"] == two["status"] == "ok", proc.stdout
    assert one["job_id"] != two["job_id"] and f"Slurm job {two['job_id']}" in proc.stdout
    summary = json.loads((out / "nodes-2x1" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["preflight"]["busbw_gbs"] > 0
    env = json.loads((out / "nodes-2x1" / "env.json").read_text())
    assert env["slurm"]["SLURM_NNODES"] == "2"  # two nodes, not two tasks on one
    assert two["efficiency"] == pytest.approx(two["samples_per_s"] / 2 / one["samples_per_s"])
    assert (out / "scaling.png").exists() and "| 2x1 | 2 | ok |" in (out / "scaling.md").read_text()
