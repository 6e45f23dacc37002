"""The scaling cost model: a worked example done by hand, and the monotonicity it must have."""

import itertools
import json
import math

import pytest

from hpc_dl.bench import project
from hpc_dl.bench.scaling import Point
from tests.conftest import ROOT, run_cli

NVLINK = project.Link(400.0, 0.0)
IB = project.Link(50.0, 10.0)


def test_worked_example_by_hand():
    # 1 GFLOP per sample, 32 samples per device, 100 TFLOP/s achieved, 100 M fp32 gradients,
    # 4 nodes of 8 devices, half of the all-reduce overlapped with backward.
    w = project.Workload(flops_per_sample=1e9, batch_per_device=32, grad_bytes=4e8, tflops_per_device=100.0,
                         overlap=0.5)  # fmt: skip
    r = project.predict(w, Point(4, 8), NVLINK, IB, "ring")
    compute = 1e9 * 32 / 100e12  # 0.32 ms
    intra = 2 * 7 / 8 * 4e8 / 400e9  # ring reduce-scatter + all-gather in the node: 1.75 ms
    inter = 2 * 3 * 10e-6 + 2 * 3 / 4 * (4e8 / 8) / 50e9  # each device's eighth across 4 nodes: 1.56 ms
    hidden = min(0.5 * (intra + inter), 2 / 3 * compute)  # capped by backward
    assert r["compute_s"] == pytest.approx(compute)
    assert r["comm_s"] == pytest.approx(intra + inter) == pytest.approx(3.31e-3)
    assert r["hidden_s"] == pytest.approx(hidden) == pytest.approx(2.1333e-4, rel=1e-4)
    assert r["step_s"] == pytest.approx(compute + intra + inter - hidden)
    assert r["samples_per_s"] == pytest.approx(32 * 32 / r["step_s"])

    tree = project.predict(w, Point(4, 8), NVLINK, IB, "tree")
    assert tree["comm_s"] == pytest.approx(intra + 2 * 2 * 10e-6 + 2 * 5e7 / 50e9)

    rows = project.project(w, [Point(1, 8), Point(4, 8)], NVLINK, IB, "ring")
    one_node = 1e9 * 32 / 100e12 + intra - min(0.5 * intra, 2 / 3 * compute)
    assert rows[0]["step_s"] == pytest.approx(one_node)
    assert rows[1]["efficiency"] == pytest.approx(one_node / r["step_s"])  # weak: T_base / T


def test_strong_scaling_splits_the_global_batch():
    w = project.Workload(1e9, 64, 4e8, 100.0, mode="strong", base_devices=8)  # global batch 512
    r = project.predict(w, Point(8, 8), NVLINK, IB, "ring")
    assert r["batch_per_device"] == 8 and r["compute_s"] == pytest.approx(1e9 * 8 / 100e12)


SIZES = [8, 2**20, 4e8, 1.4e10]


@pytest.mark.parametrize("algorithm", ["ring", "tree", "auto"])
def test_more_nodes_never_cost_less_communication(algorithm):
    for size, per_node in itertools.product(SIZES, (1, 4, 8)):
        comm = [project.allreduce_s(size, n, per_node, NVLINK, IB, algorithm) for n in range(1, 1025)]
        assert all(b >= a for a, b in itertools.pairwise(comm)), (size, per_node)
        assert comm[0] == project.ring_s(size, per_node, NVLINK)  # one node: NVLink only


@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_weak_efficiency_never_rises_with_nodes_and_strong_falls_faster(overlap):
    points = [Point(2**i, 8) for i in range(11)]
    weak = project.project(project.Workload(1e9, 32, 4e8, 300.0, overlap), points, NVLINK, IB)
    eff = [r["efficiency"] for r in weak]
    assert eff[0] == 1.0 and all(b <= a + 1e-12 for a, b in itertools.pairwise(eff))
    strong = project.project(project.Workload(1e9, 32, 4e8, 300.0, overlap, "strong", 8), points, NVLINK, IB)
    assert all(s["efficiency"] <= w["efficiency"] + 1e-12 for s, w in zip(strong, weak))
    assert all(0 < r["efficiency"] <= 1 for r in weak + strong)


def test_tree_wins_for_small_messages_on_many_nodes_ring_for_large_on_few():
    assert project.tree_s(1024, 512, IB) < project.ring_s(1024, 512, IB)
    assert project.ring_s(1e9, 2, IB) < project.tree_s(1e9, 2, IB)
    assert project.tree_s(1024, 512, IB) == pytest.approx(2 * math.ceil(math.log2(512)) * 10e-6 + 2 * 1024 / 50e9)


def test_links_from_presets_numbers_and_a_measurement():
    assert project.parse_link("ndr") == project.LINKS["ndr"]
    assert project.parse_link("25:3") == project.Link(25.0, 3.0, "stated 25:3")
    measured = {"world_size": 4, "device": "cpu", "backend": "gloo", "rows": [
        {"op": "all_reduce", "bytes": 8, "time_us": 60.0, "busbw_gbs": 0.0},
        {"op": "all_reduce", "bytes": 2**20, "time_us": 900.0, "busbw_gbs": 1.7},
        {"op": "all_gather", "bytes": 2**20, "time_us": 500.0, "busbw_gbs": 9.0},
    ]}  # fmt: skip
    link = project.link_from_collectives(measured)
    assert link.busbw_gbs == 1.7 and link.latency_us == 60.0 / 6  # 2(n-1) ring steps
    with pytest.raises(Exception, match="link 'fast'"):
        project.parse_link("fast")


# --------------------------------------------------- the command line (issue 14)
def test_mfu_is_a_fraction(tmp_path):
    proc = run_cli("bench", "project", "configs/digits_cnn.yaml", "--mfu", "40", cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --mfu 40: MFU is a fraction in (0, 1]; give 0.4 for 40 %"), proc.stderr


def test_nvlink_label_follows_the_gpu_and_its_count():
    a100 = project.nvlink("A100 64GB", 4)
    assert a100.source.startswith("4x A100 64GB, NVLink 3") and a100.busbw_gbs < project.nvlink("H100 SXM", 8).busbw_gbs
    assert project.nvlink("H100 SXM", 8).source.startswith("8x H100 SXM, NVLink 4")
    assert "no NVLink figures for 'MI250X'" in project.nvlink("MI250X", 8).source


def test_the_projection_is_plotted_without_out(tmp_path):
    proc = run_cli("bench", "project", ROOT / "configs/digits_cnn.yaml", "--mfu", "0.4", "--gpu", "A100 64GB",
                   "--gpus-per-node", "4", "--nodes", "1,2", cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "runs").glob("projection-*")
    assert (folder / "projection.png").stat().st_size > 0 and (folder / "projection.json").is_file()
    assert f"wrote {folder.relative_to(tmp_path)}/projection.json" in proc.stdout
    assert "(4x A100 64GB, NVLink 3" in proc.stdout


def test_projection_plot_says_nodes_as_well_as_devices(tmp_path):
    proc = run_cli("bench", "project", ROOT / "configs/digits_cnn.yaml", "--mfu", "0.4", "--gpu", "H100 SXM",
                   "--gpus-per-node", "4", "--nodes", "1,2,8", "--out", tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "projection.json").read_text())
    for ax in project.figure(result).axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["4\n1 node", "8\n2 nodes", "32\n8 nodes"], labels
