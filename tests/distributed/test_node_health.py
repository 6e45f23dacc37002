"""Preflight's node health: the outlier analysis on crafted reports (a slow node, a slow link, a bad GPU
on one node), the rounds of node pairs, and real runs on local gloo ranks: a rank stopped again and again
during its matmul is named, and a ring of (faked) hosts times every node pair."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from hpc_dl.distributed import preflight
from tests.conftest import run_cli
from tests.distributed.launch import QUIET, free_port, slurm_env, srun_like, torchrun


def _ranks(rates, per_node=1, h2d=None):
    """One row per rank; ``per_node`` consecutive ranks share a host n0, n1, ..."""
    return [{"rank": r, "host": f"n{r // per_node}", "matmul_tflops": rate, "h2d_gbs": h2d[r] if h2d else None,
             "pairs": []} for r, rate in enumerate(rates)]  # fmt: skip


def _ring(report, busbw):
    """The ring's pairs, as the leaders of its first nodes report them: busbw[i] for (n_i, n_i+1)."""
    hosts = list(dict.fromkeys(r["host"] for r in report))
    leaders = {h: min(r["rank"] for r in report if r["host"] == h) for h in hosts}
    for number, pairs in enumerate(preflight.node_rounds(len(hosts)), 1):
        for i, j in pairs:
            row = report[leaders[hosts[i]]]
            row["pairs"].append({"nodes": [hosts[i], hosts[j]], "ranks": [leaders[hosts[i]], leaders[hosts[j]]],
                                 "round": number, "busbw_gbs": busbw[i]})  # fmt: skip
    return report


def _named(found):
    return [(o["node"], o["figure"], o["against"]) for o in found]


def test_a_slow_matmul_node_of_four_is_named_with_the_exclude_line():
    report = _ring(_ranks([690, 700, 680, 695, 710, 690, 41.2, 690], per_node=2), [24.0] * 4)
    found = preflight.outliers(report)
    assert _named(found) == [("n3", "matmul_tflops", "nodes")]  # not also rank 6 on its own: one line per cause
    (line, exclude) = preflight.outlier_lines(found)
    assert line == ("preflight: node n3 is slow: matmul 41.2 TFLOP/s (rank 6, its slowest) vs 690 "
                    "(median of the other nodes)")  # fmt: skip
    assert exclude.endswith("next time: sbatch --exclude=n3")


def test_a_slow_link_names_the_node_in_both_slow_pairs_not_its_neighbours():
    # n2's links are bad: (n1, n2) and (n2, n3) are slow, (n0, n1) and (n3, n0) are fine
    report = _ring(_ranks([700] * 4), [24.0, 3.1, 2.9, 23.5])
    found = preflight.outliers(report)
    assert _named(found) == [("n2", "link_gbs", "nodes")]
    assert found[0]["value"] == 3.1 and found[0]["median"] == 24.0  # its best pair; the others' best: 24, 24, 23.5
    assert "node n2 is slow: link 3.1 GB/s (its best pair) vs 24" in preflight.outlier_lines(found)[0]


def test_with_three_nodes_a_bad_link_is_still_placed():
    report = _ring(_ranks([700] * 3), [2.0, 2.1, 24.0])  # (n0, n1), (n1, n2) slow: n1 is in both
    assert _named(preflight.outliers(report)) == [("n1", "link_gbs", "nodes")]


def test_of_two_nodes_the_slow_one_is_named_but_a_shared_link_blames_neither():
    report = _ring(_ranks([700, 700, 300, 690], per_node=2), [2.0])
    assert _named(preflight.outliers(report)) == [("n1", "matmul_tflops", "nodes")]  # against the other node


def test_on_one_host_a_slow_rank_is_named():
    found = preflight.outliers(_ranks([0.09, 0.088, 0.031, 0.091], per_node=4))
    assert _named(found) == [("n0", "matmul_tflops", "ranks")] and found[0]["rank"] == 2
    line, exclude = preflight.outlier_lines(found)
    assert line == "preflight: rank 2 (n0) is slow: matmul 0.031 TFLOP/s vs 0.09 (median of the other ranks)"
    assert exclude.endswith("sbatch --exclude=n0")


def test_equal_or_within_the_margin_names_nobody_and_margin_zero_is_off():
    report = _ring(_ranks([700] * 8, per_node=2, h2d=[25.0] * 8), [24.0] * 4)
    assert preflight.outliers(report) == [] and preflight.outlier_lines([]) == []
    assert preflight.outliers(_ranks([700, 700, 530, 700])) == []  # 24 % slower: within 0.25
    assert preflight.outliers(_ranks([700, 700, 100, 700]), margin=0) == []


def test_the_exclude_line_lists_every_outlier_node_once():
    h2d = [25.0, 25.0, 25.0, 4.0, 25.0, 25.0, 25.0, 25.0]  # n1's second rank copies slowly
    report = _ring(_ranks([700, 700, 700, 700, 700, 700, 300, 300], per_node=2, h2d=h2d), [24.0, 2.0, 2.0, 24.0])
    found = preflight.outliers(report)
    assert sorted(_named(found)) == [("n1", "h2d_gbs", "nodes"), ("n2", "link_gbs", "nodes"),
                                     ("n3", "matmul_tflops", "nodes")]  # fmt: skip
    lines = preflight.outlier_lines(found)
    assert len(lines) == 4 and sum("--exclude" in line for line in lines) == 1
    assert lines[-1].endswith("sbatch --exclude=n3,n1,n2")  # in the order named: matmul, copy, link
    assert "node n1 is slow: host-to-device copy 4 GB/s (rank 3, its slowest) vs 25" in lines[1]


@pytest.mark.parametrize("n", range(1, 10))
def test_node_pairs_form_the_ring_in_at_most_three_rounds_of_disjoint_pairs(n):
    rounds = preflight.node_rounds(n)
    pairs = [p for r in rounds for p in r]
    if n < 3:
        assert pairs == ([(0, 1)] if n == 2 else [])
        return
    assert sorted(pairs) == sorted((i, (i + 1) % n) for i in range(n)) and len(rounds) == (2 if n % 2 == 0 else 3)
    for r in rounds:
        nodes = [x for p in r for x in p]
        assert len(nodes) == len(set(nodes))  # disjoint: they run at once


def test_the_report_shows_the_new_columns_the_pairs_and_then_the_outliers():
    report = _ring(_ranks([690, 700, 41.2, 690], h2d=[25.1, 24.8, 25.0, 25.3]), [24.0, 23.1, 22.7, 24.4])
    for r in report:
        r.update(local_rank=0, device="NVIDIA H100 80GB HBM3", free_gib=79.1, nccl="2.21.5", transport="IB",
                 all_reduce_ok=True, busbw_gbs=41.2)  # fmt: skip
    lines = preflight.format_report(report).splitlines()
    assert lines[1].split()[-2:] == ["matmul_tflops", "h2d_gbs"] and lines[4].split()[-2:] == ["41.2", "25.0"]
    assert lines[6].startswith("node pairs") and lines[7].split() == ["round", "nodes", "ranks", "busbw_gbs"]
    assert [line.split() for line in lines[8:12]] == [["1", "n0", "-", "n1", "0,1", "24.0"],
                                                      ["1", "n2", "-", "n3", "2,3", "22.7"],
                                                      ["2", "n1", "-", "n2", "1,2", "23.1"],
                                                      ["2", "n3", "-", "n0", "3,0", "24.4"]]  # fmt: skip
    assert lines[12].startswith("preflight: node n2 is slow: matmul 41.2") and "--exclude=n2" in lines[13]
    assert len(lines) == 14
    cpu = [dict(r, pairs=[], host="vm", h2d_gbs=None, matmul_tflops=0.08) for r in report]
    text = preflight.format_report(cpu)
    assert "h2d_gbs" not in text and "node pairs: none to time on one host" in text and "slow" not in text


# ---------------------------------------------------------------- real ranks (gloo, on this machine's CPUs)
def _stdout(procs, timeout=180):
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outs
    return outs[0][0]


@pytest.mark.slow
def test_a_rank_stopped_again_and_again_during_its_matmul_is_named():
    rank0, rank1 = procs = srun_like("preflight", "--megabytes", "1", "--matmul-seconds", "1")
    done = threading.Event()

    def slow_down():  # rank 1 runs a third of the time, from its start to its end
        with contextlib.suppress(ProcessLookupError):  # it ended (and was reaped) meanwhile
            while not done.is_set() and rank1.poll() is None:
                os.kill(rank1.pid, signal.SIGSTOP)
                time.sleep(0.06)
                os.kill(rank1.pid, signal.SIGCONT)
                time.sleep(0.03)

    stopper = threading.Thread(target=slow_down)
    stopper.start()
    try:
        out = _stdout(procs)
    finally:
        done.set()
        stopper.join()
        if rank1.poll() is None:
            os.kill(rank1.pid, signal.SIGCONT)
    host = socket.gethostname()
    rates = {int(row.split()[0]): float(row.split()[9]) for row in out.splitlines() if row[:1].isdigit()}
    assert f"preflight: rank 1 ({host}) is slow: matmul" in out and "preflight: rank 0" not in out, out
    assert f"next time: sbatch --exclude={host}" in out
    print(f"matmul GFLOP/s: rank 0 {rates[0] * 1e3:.1f}, rank 1 (stopped 2/3 of the time) {rates[1] * 1e3:.1f}")


@pytest.mark.slow
def test_two_ranks_report_their_matmul_rate_and_no_pairs_on_one_host():
    out = torchrun("preflight", "--megabytes", "1", "--margin", "0.9").stdout  # a margin noise cannot reach
    header, *rows = [line.split() for line in out.splitlines()[1:4]]
    assert header[9] == "matmul_tflops" and "h2d_gbs" not in header
    assert [r[0] for r in rows] == ["0", "1"] and all(float(r[9]) > 0 for r in rows)
    assert "node pairs: none to time on one host" in out and "is slow" not in out and "--exclude" not in out


FAKE_HOSTS = """\
import os, socket, sys
rank = int(os.environ["SLURM_PROCID"])
socket.gethostname = lambda: ["n0", "n0", "n1", "n2"][rank]  # four ranks on three 'nodes'
from hpc_dl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_every_node_pair_of_the_ring_is_timed_by_the_nodes_lowest_ranks(tmp_path):
    script = tmp_path / "fake_hosts.py"
    script.write_text(FAKE_HOSTS)
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    procs = [
        subprocess.Popen(
            [sys.executable, script, "preflight", "--megabytes", "1", "--matmul-seconds", "0.1"],
            env={**clean, **QUIET, **slurm_env(r, 4, port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(4)
    ]
    out = _stdout(procs)
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["round"])
    pairs = [line.split() for line in lines[start + 1 : start + 4]]
    assert [p[:5] for p in pairs] == [["1", "n0", "-", "n1", "0,2"], ["2", "n1", "-", "n2", "2,3"],
                                      ["3", "n2", "-", "n0", "3,0"]], out  # fmt: skip
    assert all(float(p[5]) > 0 for p in pairs)


@pytest.mark.gpu
def test_on_a_gpu_the_matmul_is_timed_in_bf16_and_the_copy_from_pinned_memory():
    start = time.perf_counter()
    rate = preflight._matmul_tflops(torch.device("cuda"), 0.2)
    assert rate > 10 and time.perf_counter() - start < 3  # any data-centre GPU in bf16; a deadline, not a count
    out = run_cli("preflight", "--device", "cuda", "--megabytes", "16").stdout  # a world of one: NCCL, one host
    lines = out.splitlines()
    assert lines[1].split()[-2:] == ["matmul_tflops", "h2d_gbs"], out
    matmul, h2d = map(float, lines[2].split()[-2:])
    assert matmul > 10 and h2d > 1 and "node pairs: none to time on one host" in out
    print(f"matmul {matmul} TFLOP/s, host-to-device {h2d} GB/s")
