"""Checkpoint files: atomic writes, the latest pointer, rotation, safe and clear loading."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from hpc_dl import checkpoint
from hpc_dl.checkpoint import CheckpointDir
from hpc_dl.errors import CheckpointError


def test_save_load_round_trip_and_latest_pointer(tmp_path):
    d = CheckpointDir(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        d.save(step, {"w": torch.full((3,), float(step)), "step": step})
    assert [p.name for p in d.files()] == ["step_00000030.pt", "step_00000020.pt"]  # rotation
    assert (tmp_path / "latest").read_text().strip() == "step_00000030.pt"
    path, state = d.load_latest()
    assert path.name == "step_00000030.pt" and torch.equal(state["w"], torch.full((3,), 30.0))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_truncated_checkpoint_is_a_clear_error_naming_the_file(tmp_path):
    d = CheckpointDir(tmp_path, keep_last=3)
    path = d.save(5, {"w": torch.randn(1000)})
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or truncated"):
        checkpoint.load(path)


def test_garbage_and_foreign_files_are_rejected(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt is corrupt or truncated"):
        checkpoint.load(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(CheckpointError, match="plain.pt is not an hpc_dl checkpoint"):
        checkpoint.load(plain)


def test_pickled_code_is_refused_by_weights_only(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": pytest.approx}, evil)  # an arbitrary Python object
    with pytest.raises(CheckpointError, match="evil.pt is corrupt or truncated") as info:
        checkpoint.load(evil)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, capsys):
    d = CheckpointDir(tmp_path, keep_last=3)
    d.save(1, {"step": 1})
    newest = d.save(2, {"step": 2})
    newest.write_bytes(newest.read_bytes()[:100])
    path, state = d.load_latest()
    assert path.name == "step_00000001.pt" and state["step"] == 1
    assert "step_00000002.pt is corrupt or truncated" in capsys.readouterr().err


def test_no_loadable_checkpoint_at_all_is_an_error(tmp_path):
    d = CheckpointDir(tmp_path, keep_last=3)
    d.save(1, {}).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no loadable checkpoint in"):
        d.load_latest()
    assert CheckpointDir(tmp_path / "empty", keep_last=1).load_latest() is None


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, threading, time, torch
    import hpc_dl.fileio
    from hpc_dl.checkpoint import CheckpointDir

    d = CheckpointDir(sys.argv[1], keep_last=3)
    d.save(1, {"w": torch.ones(1000)})
    real_fsync = os.fsync

    def stall(fd):  # the second checkpoint's bytes are written but not yet synced and renamed
        print("writing", flush=True)
        time.sleep(120)

    hpc_dl.fileio.os.fsync = stall
    d.save(2, {"w": torch.zeros(2_000_000)})
    """
)


def test_process_killed_while_writing_leaves_previous_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".step_00000002.pt.tmp-")]
    assert partial and partial[0].stat().st_size > 0  # killed mid-write, bytes on disk
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    d = CheckpointDir(tmp_path, keep_last=3)
    assert [p.name for p in d.files()] == ["step_00000001.pt"]
    path, state = d.load_latest()
    assert path.name == "step_00000001.pt" and torch.equal(state["w"], torch.ones(1000))


def test_save_failure_leaves_no_partial_file(tmp_path):
    d = CheckpointDir(tmp_path, keep_last=3)
    d.save(1, {"w": torch.ones(1)})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        d.save(2, {"bad": Unsaveable()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001.pt", "step_00000001.pt.sha256"]


_ASYNC = textwrap.dedent("""
    import os, sys, threading, time, torch
    from pathlib import Path
    from hpc_dl import config
    from hpc_dl.checkpoint import CheckpointDir, Checkpointer
    from hpc_dl.distributed.strategy import Strategy

    strategy = Strategy(config.load(None, []).dist, torch.device("cpu"))
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(model.parameters())
    strategy.setup(model, opt, torch.optim.lr_scheduler.StepLR(opt, 10), torch.amp.GradScaler("cpu", enabled=False))
    saver = Checkpointer(strategy, CheckpointDir(Path(sys.argv[1]), 3), "dcp", asynchronous=True)
    model(torch.ones(2, 64)).sum().backward()
    strategy.step(None)
    saver.save(1, {"step": 1})
    saver.wait()
    torch.save(model.state_dict(), Path(sys.argv[1]) / "expected.pt")

    fsync = os.fsync

    def stall(fd):  # the background writer's files never become durable: the job is killed meanwhile
        if threading.current_thread() is threading.main_thread():
            return fsync(fd)
        print("saving", flush=True)
        time.sleep(600)

    os.fsync = stall
    with torch.no_grad():
        model.weight.add_(1.0)
    saver.save(2, {"step": 2})
    print("training goes on", flush=True)
    time.sleep(600)
""")


def test_a_kill_during_an_async_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    from hpc_dl import config
    from hpc_dl.distributed.strategy import Strategy

    proc = subprocess.Popen([sys.executable, "-c", _ASYNC, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        seen = [proc.stdout.readline().strip() for _ in range(2)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert sorted(seen) == ["saving", "training goes on"]  # save(2) returned while its writer was stalled
    ckpts = CheckpointDir(tmp_path, 3)
    assert ckpts.latest() == tmp_path / "step_00000001" and (tmp_path / ".step_00000002.tmp").is_dir()

    strategy = Strategy(config.load(None, []).dist, torch.device("cpu"))
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(model.parameters())
    strategy.setup(model, opt, torch.optim.lr_scheduler.StepLR(opt, 10), torch.amp.GradScaler("cpu", enabled=False))
    state = checkpoint.load_into(strategy, ckpts.latest())
    assert state["step"] == 1 and opt.state_dict()["state"][0]["step"] == 1
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    assert tmp_path / ".step_00000002.tmp" in ckpts.clean_partial()  # what the next run's start removes
