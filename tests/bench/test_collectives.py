"""`hpc-dl bench allreduce`: nccl-tests' bandwidth definitions, checked results, real gloo ranks."""

import json

import matplotlib.image
import pytest

from hpc_dl.bench import collectives
from tests.distributed.launch import torchrun


def test_bus_bandwidth_factors_match_nccl_tests():
    # nccl-tests doc/PERFORMANCE.md: all-reduce 2(n-1)/n, all-gather and reduce-scatter (n-1)/n
    assert collectives.bus_factor("all_reduce", 8) == 1.75
    assert collectives.bus_factor("all_gather", 8) == 0.875
    assert collectives.bus_factor("reduce_scatter", 4) == 0.75
    assert collectives.bus_factor("all_reduce", 1) == 0.0  # one rank moves nothing
    # worked example: 1 GiB all-reduced by 8 ranks in 10 ms
    algbw = 2**30 / 0.010 / 1e9
    assert algbw == pytest.approx(107.374, abs=1e-3)
    assert algbw * collectives.bus_factor("all_reduce", 8) == pytest.approx(187.905, abs=1e-3)


def test_sizes_are_powers_of_two_between_the_bounds():
    assert collectives.sizes(8, 64) == [8, 16, 32, 64]
    assert collectives.sizes(5, 40) == [8, 16, 32]
    assert [collectives.parse_bytes(t) for t in ("8", "64K", "16M", "1G", "2MiB")] == [8, 2**16, 2**24, 2**30, 2**21]
    with pytest.raises(ValueError):
        collectives.parse_bytes("lots")


@pytest.mark.slow
def test_two_ranks_measure_every_collective_and_check_it(tmp_path):
    out = tmp_path / "ar"
    proc = torchrun("bench", "allreduce", "--max-bytes", "256K", "--repeats", "2", "--out", out)
    report = json.loads((out / "collectives.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["all_correct"]
    rows = report["rows"]
    for op in collectives.OPS:
        mine = [r for r in rows if r["op"] == op]
        assert [r["bytes"] for r in mine] == collectives.sizes(8, 2**18)  # 8 B .. 256 KiB, all of them
        for r in mine:
            assert r["time_us"] > 0 and r["correct"]
            assert r["algbw_gbs"] == pytest.approx(r["bytes"] / (r["time_us"] * 1e-6) / 1e9)
            assert r["busbw_gbs"] == pytest.approx(r["algbw_gbs"] * collectives.bus_factor(op, 2))
    assert report["peak_busbw_gbs"]["all_reduce"] == max(r["busbw_gbs"] for r in rows if r["op"] == "all_reduce")
    assert matplotlib.image.imread(out / "collectives.png").shape[2] in (3, 4)
    assert "reduce_scatter" in proc.stdout and "busbw" in proc.stdout
    assert proc.stdout.count("peak busbw") == 1  # the table is printed by rank 0 only


def test_bad_arguments_name_the_flag(cli):
    proc = cli("bench", "allreduce", "--ops", "all_reduce,broadcast", check=False)
    assert proc.returncode == 2 and "--ops" in proc.stderr and "broadcast" in proc.stderr
    proc = cli("bench", "allreduce", "--max-bytes", "huge", check=False)
    assert proc.returncode == 2 and "--max-bytes" in proc.stderr and "Traceback" not in proc.stderr
