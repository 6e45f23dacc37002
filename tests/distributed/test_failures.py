"""A rank that dies or never comes: the job ends within the time-out, naming it."""

import os
import signal
import socket
import time

import pytest

from tests.conftest import CONFIGS
from tests.distributed.launch import srun_like

pytestmark = pytest.mark.slow

LONG = [CONFIGS / "breast_cancer_mlp.yaml", "dist.strategy=ddp", "train.steps=100000", "log.every=5",
        "train.eval_every=0", "dist.timeout_s=20", "dist.startup_timeout_s=20", "log.plots=false",
        "dist.preflight=false"]  # fmt: skip


def _wait_for_training(run_dir, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            return
        time.sleep(0.2)
    raise AssertionError("training did not start")


def test_killed_rank_is_named_and_the_job_ends(tmp_path):
    rank0, rank1 = srun_like("train", *LONG, "--run-dir", tmp_path / "run")
    _wait_for_training(tmp_path / "run")
    killed_at = time.monotonic()
    os.kill(rank1.pid, signal.SIGKILL)
    _, err = rank0.communicate(timeout=60)
    rank1.communicate()
    assert rank0.returncode == 1
    assert time.monotonic() - killed_at < 20 + 10  # the time-out, plus the diagnosis
    assert f"rank 1 ({socket.gethostname()}) failed or stopped responding" in err, err
    print(f"rank 0 exited {time.monotonic() - killed_at:.1f} s after the kill: {err.strip()}")
    assert "Traceback" not in err


def test_rank_that_never_starts_is_named(tmp_path):
    (rank0,) = srun_like("train", *LONG, "--run-dir", tmp_path / "run", ranks=(0,))  # rank 1 never comes
    _, err = rank0.communicate(timeout=60)
    assert rank0.returncode == 1
    assert f"rank 1 ({socket.gethostname()}) did not start within dist.startup_timeout_s = 20 s" in err
    assert f"present: rank 0 on {socket.gethostname()}" in err


def test_preflight_fails_naming_the_missing_rank(tmp_path):
    (proc,) = srun_like("preflight", "--timeout", "3", ranks=(0,))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip() == (
        f"error: rank 1 ({socket.gethostname()}) did not start within dist.startup_timeout_s = 3 s; "
        f"present: rank 0 on {socket.gethostname()}"
    )


def test_torchrun_job_with_a_killed_rank_exits_non_zero_naming_it(tmp_path):
    import subprocess
    import sys

    from tests.distributed.launch import QUIET

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hpc_dl",
           "train", *map(str, LONG), "--run-dir", str(tmp_path / "run")]  # fmt: skip
    job = subprocess.Popen(cmd, env={**os.environ, **QUIET}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_training(tmp_path / "run")
    victim = _worker_pid(job.pid, rank=1)
    os.kill(victim, signal.SIGKILL)
    out, err = job.communicate(timeout=60)
    assert job.returncode != 0
    assert "rank 1" in out + err or "rank: 1" in out + err, out + err


def _worker_pid(parent: int, rank: int) -> int:
    """The child of ``parent`` whose environment says RANK=rank."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} under {parent}")
