"""A hung rank is named with its host and the collective the others wait in (flight recorder dumps),
on the spot and afterwards with `hpc-dl diagnose`."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from hpc_dl.distributed import hang
from tests.conftest import CONFIGS
from tests.distributed.launch import QUIET
from tests.distributed.test_failures import _wait_for_training, _worker_pid

HOST = socket.gethostname()
LONG = [CONFIGS / "breast_cancer_mlp.yaml", "dist.strategy=ddp", "train.steps=100000", "log.every=5",
        "train.eval_every=0", "dist.timeout_s=15", "log.plots=false", "dist.preflight=false"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, 4])
def test_stopped_rank_is_named_with_its_host_and_collective(tmp_path, cli, nproc):
    """SIGSTOP the last rank mid-run: the job ends within the training time-out plus the 5 s in
    which survivors ask who is gone (and slack for a busy 2-core machine), instead of torchrun's
    30 s grace after it; the line names the rank, its host and the collective; diagnose agrees."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "hpc_dl",
           "train", *map(str, LONG), "--run-dir", str(run)]  # fmt: skip
    job = subprocess.Popen(cmd, env={**os.environ, **QUIET}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim_rank = nproc - 1
    try:
        _wait_for_training(run)
        victim = _worker_pid(job.pid, rank=victim_rank)
        stopped_at = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        out, err = job.communicate(timeout=120)
        took = time.monotonic() - stopped_at
    finally:
        if job.poll() is None:
            job.kill()
    print(f"{nproc} ranks: torchrun exited {took:.1f} s after the stop\n{err[-2000:]}")
    assert job.returncode != 0
    named = f"rank {victim_rank} ({HOST}) failed or stopped responding"
    assert named in err and "during training (dist.timeout_s = 15 s)" in err, err
    assert f"killed rank {victim_rank} (PID {victim}) on this host" in err, err
    assert took < 15 + 5 + 15, f"the job ended {took:.0f} s after the stop (dist.timeout_s = 15)"
    # the collective the stop caught: the gradient all-reduce, or a log window's gather of the ranks' times
    pattern = (
        r"stopped at ((?:all_reduce|all_gather|broadcast) #\d+ on process group \S+ \([^)]*\)), "
        r"the last collective of (ranks? [^;]*);"
    )
    lines = [ln for ln in err.splitlines() if "failed or stopped responding" in ln]
    found = [re.search(pattern, ln) for ln in lines]
    assert lines and all(found), err  # every survivor's line has the analysis
    survivors = {f"{r} ({HOST})" for r in range(nproc - 1)}
    for f in found:  # the ranks named at the collective are survivors (the stopped rank left no trace)
        assert set(f.group(2).removeprefix("ranks ").removeprefix("rank ").split(", ")) <= survivors
    assert f"rank {victim_rank} ({HOST}) left no trace" in err
    assert sorted(p.name for p in (run / "hang").glob("*.json")) == [f"rank{r}.json" for r in range(nproc - 1)]

    diagnosis = cli("diagnose", run).stdout.strip()  # from every survivor's final dump
    assert re.search(pattern, diagnosis) and f"rank {victim_rank} ({HOST}) left no trace" in diagnosis, diagnosis
    assert re.search(pattern, diagnosis).group(1) in {f.group(1) for f in found}
    step = json.loads((run / "hang" / "rank0.json").read_text())["step"]
    assert step > 0 and diagnosis.endswith(f"last completed step {step}")


MISMATCH = """
import datetime, sys, torch, torch.distributed as dist
from pathlib import Path
from hpc_dl.distributed import hang
hang.enable()
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=5))
rank = dist.get_rank()
members = [{"rank": r, "host": f"node{r}"} for r in range(dist.get_world_size())]
for _ in range(3):
    dist.all_reduce(torch.ones(8))
try:
    # different collectives per rank (gloo aborts the process on a size mismatch; NCCL would hang)
    dist.all_reduce(torch.ones(8)) if rank == 0 else dist.broadcast(torch.ones(8), src=1)
    dist.all_reduce(torch.ones(8))
except Exception as e:
    hang.dump(Path(sys.argv[1]), rank, 3, members, str(e))
"""


@pytest.mark.slow
def test_ranks_in_different_collectives_at_one_sequence_number_are_a_mismatch(tmp_path, cli):
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCH)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "hang")]  # fmt: skip
    subprocess.run(cmd, env={**os.environ, **QUIET}, capture_output=True, timeout=120)
    dumps = hang.read(tmp_path / "hang")
    assert set(dumps) == {0, 1}, "both ranks dump"
    line = cli("diagnose", tmp_path).stdout.strip()
    assert line.startswith("collective mismatch at #4 on process group default_pg: rank 0: all_reduce #4"), line
    assert "(8 Float)" in line and "rank 1: broadcast #4 on process group default_pg (8 Float)" in line
    assert line.endswith("last completed step 3")


def _dump(rank, entries, step=7, members=4):
    return {"rank": rank, "host": f"n{rank}", "step": step, "members": [{"rank": r, "host": f"n{r}"} for r in
            range(members)], "entries": entries}  # fmt: skip


def _e(seq, t, pg="default_pg", op="all_reduce", sizes=((1024,),)):
    return {"pg": pg, "seq": seq, "op": op, "sizes": [list(s) for s in sizes], "dtypes": ["Float"], "t": t}


def test_the_earliest_collective_a_rank_is_at_is_named_and_other_groups_do_not_confuse_the_sequence():
    dumps = {
        0: _dump(0, [_e(40, 1), _e(900, 2, pg="flags"), _e(41, 3)]),  # went on: #40 completed for it
        1: _dump(1, [_e(39, 1), _e(40, 2), _e(900, 3, pg="flags")], step=6),  # its newest is on another group
        2: _dump(2, [_e(40, 5)]),
    }
    line = hang.analyse(dumps, 4)
    assert line.startswith("stopped at all_reduce #40 on process group default_pg (1024 Float), the last collective of"
                           " ranks 1 (n1), 2 (n2);"), line  # fmt: skip
    assert "rank 0 (n0) went on to #41 (it completed for them)" in line and "rank 3 (n3) left no trace" in line
    assert line.endswith("last completed step 7")


def test_every_rank_in_the_collective_is_said_so():
    line = hang.analyse({r: _dump(r, [_e(5, 1)], members=2) for r in (0, 1)}, 2)
    assert "every rank issued it" in line


def test_diagnose_refuses_what_is_not_a_dump_in_one_line(tmp_path, cli):
    (tmp_path / "hang").mkdir()
    crafted = ['{"rank": 0}', '{"rank": 0, "entries": []}', json.dumps({**_dump(0, [_e(1, 1)]), "members": [{}]}),
               json.dumps(_dump(0, [{**_e(1, 1), "sizes": 5}])), json.dumps(_dump(0, [{"seq": 1}]))]  # fmt: skip
    for text in crafted:  # each used to pass read() and fail in analyse() with a traceback
        (tmp_path / "hang" / "rank0.json").write_text(text)
        proc = cli("diagnose", tmp_path, check=False)
        assert proc.returncode == 2 and "rank0.json: not a hang dump written by hpc_dl" in proc.stderr, text
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    empty = cli("diagnose", tmp_path / "nothing", check=False)
    assert empty.returncode == 2 and "no hang dumps" in empty.stderr
