"""Pre-emption without Slurm: a signal makes every rank checkpoint after the same step and
exit with EXIT_STOPPED; --resume auto then finishes the run with the uninterrupted step count."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_dl import checkpoint, config
from hpc_dl.errors import ConfigError
from hpc_dl.telemetry import events
from hpc_dl.training.stop import EXIT_STOPPED
from tests.conftest import CONFIGS, run_cli
from tests.distributed.launch import QUIET, free_port

pytestmark = pytest.mark.slow

RUN = [CONFIGS / "breast_cancer_mlp.yaml", "train.steps=4000", "log.every=50", "log.plots=false",
       "train.eval_every=0"]  # fmt: skip


def _wait_for_training(run_dir: Path, proc: subprocess.Popen, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("training did not start")


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


def test_signal_checkpoints_and_resume_completes_the_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hpc_dl", "train", *map(str, RUN), "--run-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_training(out, proc)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, stderr
    assert "stopped by SIGUSR1 after step" in stderr and "--resume auto" in stderr
    stopped_at = int(stderr.split("after step ")[1].split(";")[0])
    assert 0 < stopped_at < 4000
    assert checkpoint.CheckpointDir(out / "checkpoints", 3).latest().name == f"step_{stopped_at:08d}.pt"
    assert not (out / "summary.json").exists()

    run_cli("train", *RUN, "--run-dir", out, "--resume", "auto")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4000 and summary["resumed_from"].endswith(f"step_{stopped_at:08d}.pt")
    steps = _steps(out)
    assert steps == sorted(set(steps)) and steps[-1] == 4000  # no step logged twice, none missing at the end
    # Two segments in events.jsonl: stopped at the signal, then resumed from there and completed.
    first, second = zip(*[iter(events.read(out))] * 2)
    assert [e["event"] for e in (*first, *second)] == ["start", "end", "start", "end"]
    assert (first[0]["step"], first[1]["step"], first[1]["outcome"]) == (0, stopped_at, "stopped")
    assert "SIGUSR1" in first[1]["message"]
    assert second[0]["step"] == stopped_at and second[0]["resumed_from"].endswith(f"step_{stopped_at:08d}.pt")
    assert (second[1]["step"], second[1]["outcome"]) == (4000, "completed")


def test_two_ranks_stop_after_the_same_step_when_one_is_signalled(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "hpc_dl",
           "train", *map(str, RUN), "dist.strategy=ddp", "--run-dir", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **QUIET})
    _wait_for_training(out, proc)
    (rank1,) = [p for p in _children(proc.pid) if "RANK=1" in _environ(p)]
    os.kill(rank1, signal.SIGUSR1)  # only rank 1 sees it; rank 0 must stop too
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun reports a worker's non-zero exit as its own failure
    said = [line for line in stderr.splitlines() if "stopped by SIG" in line and "continue with" in line]
    assert len(said) == 2, stderr
    steps = {line.split("after step ")[1].split(";")[0] for line in said}
    assert len(steps) == 1  # the same step on both ranks
    (step,) = steps
    state = checkpoint.load(out / "checkpoints" / f"step_{int(step):08d}.pt")
    assert state["step"] == int(step) and len(state["rng"]) == 2


def test_bad_signal_name_is_a_config_error():
    with pytest.raises(ConfigError, match="train.stop_signals"):
        config.load(None, ["train.stop_signals=[USR1,KILL]"])
    with pytest.raises(ConfigError, match="train.stop_signals"):
        config.load(None, ["train.stop_signals=[NOPE]"])


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b" ").decode(errors="replace")
