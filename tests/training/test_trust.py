"""Nothing already written is lost: the run directory's lock, checksums, the `latest` pointer,
non-finite losses, a full disk, and resumes whose config changes the run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch

from hpc_dl import checkpoint
from hpc_dl.checkpoint import CheckpointDir
from hpc_dl.errors import CheckpointError
from hpc_dl.fileio import DirectoryLock
from hpc_dl.telemetry import events
from tests.conftest import run_cli

QUICK = ["log.progress=plain", "log.plots=false", "log.utilisation=false"]


# ------------------------------------------------------------------ unit
def test_latest_pointer_cannot_leave_the_checkpoint_folder(tmp_path, capsys):
    d = CheckpointDir(tmp_path / "checkpoints", keep_last=3)
    d.save(1, {"step": 1})
    for target in ("/etc/passwd", "../../etc/passwd", "../step_00000001.pt", "step_00000009.pt"):
        (d.path / "latest").write_text(target + "\n")
        assert d.latest() == d.path / "step_00000001.pt", target
    assert "not a checkpoint in that folder" in capsys.readouterr().err
    (d.path / "latest").unlink()
    (d.path / "latest").symlink_to("/etc/passwd")
    assert d.latest() == d.path / "step_00000001.pt"


def test_a_flipped_bit_is_caught_by_the_checksum_and_an_older_checkpoint_used(tmp_path, capsys):
    d = CheckpointDir(tmp_path, keep_last=3)
    d.save(1, {"w": torch.zeros(1000)})
    newest = d.save(2, {"w": torch.ones(1000)})
    assert (tmp_path / "step_00000002.pt.sha256").read_text().split()[1] == "step_00000002.pt"
    raw = bytearray(newest.read_bytes())
    at = raw.index(torch.ones(1).numpy().tobytes())  # inside the tensor data, which torch.load does not check
    raw[at] ^= 0x01
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256 does not match step_00000002.pt.sha256"):
        checkpoint.load(newest)
    path, state = d.load_latest()
    assert path.name == "step_00000001.pt" and torch.equal(state["w"], torch.zeros(1000))
    assert "trying an older checkpoint" in capsys.readouterr().err


def test_a_missing_checksum_is_treated_as_corrupt(tmp_path):
    path = CheckpointDir(tmp_path, 3).save(1, {"step": 1})
    (tmp_path / "step_00000001.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="its checksum file step_00000001.pt.sha256 is missing"):
        checkpoint.load(path)


def test_a_weights_only_refusal_does_not_advise_weights_only_false(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": uuid.UUID(int=1)}, evil)  # a non-tensor Python object
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(evil)
    message = str(info.value)
    assert "uuid.UUID" in message and "weights_only=False" not in message and "trust the source" not in message


def test_second_lock_names_the_holder_and_a_dead_holder_frees_it(tmp_path):
    held = DirectoryLock(tmp_path)
    with pytest.raises(Exception, match=rf"in use by host .+, PID {os.getpid()}"):
        DirectoryLock(tmp_path)
    held.release()
    DirectoryLock(tmp_path).release()
    # A holder killed with SIGKILL: the kernel drops its lock.
    code = (
        f"from hpc_dl.fileio import DirectoryLock; DirectoryLock({str(tmp_path)!r}); print('held', flush=True); input()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"PID {holder.pid}"):
        DirectoryLock(tmp_path)
    holder.kill()
    holder.wait()
    DirectoryLock(tmp_path).release()


# ------------------------------------------------------------- end to end
def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_two_runs_into_one_directory_the_second_is_refused(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "hpc_dl", "train", "train.steps=100000", "checkpoint.every=5", *QUICK]
    first = subprocess.Popen([*args, "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (run / "checkpoints" / "latest").exists())
        for extra in ([], ["--resume", "auto"]):
            proc = run_cli("train", "train.steps=10", *QUICK, "--run-dir", run, *extra, check=False)
            assert proc.returncode == 2, proc.stderr
            assert f"run directory {run} is in use by host" in proc.stderr and f"PID {first.pid}" in proc.stderr
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert first.poll() is None  # the first run goes on, undisturbed
        (run / "checkpoints" / f".step_00000001.pt.tmp-{first.pid + 1}").write_bytes(b"half")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run left its lock (freed by the kernel) and a temporary file: the resume cleans it.
    proc = run_cli("train", "train.steps=1", *QUICK, "--run-dir", run, "--resume", "auto", check=False)
    assert "removed" in proc.stderr and ".tmp-" in proc.stderr  # then refused: 1 step is shorter than the run
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    # SGD at a learning rate of 1e4 on the breast-cancer MLP without clipping: the loss overflows within steps.
    args = ["data.name=breast_cancer", "model.name=mlp", "optim.name=sgd", "optim.lr=1e4", "optim.momentum=0.9",
            "train.grad_clip=null", "train.steps=200", "checkpoint.every=1", "log.every=50", *QUICK]  # fmt: skip
    proc = run_cli("train", *args, "--run-dir", run, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "the training loss became non-finite at step" in line and "on rank 0" in line
    step = int(line.split("at step ")[1].split()[0])
    kept = CheckpointDir(run / "checkpoints", 3)
    assert kept.latest().name == f"step_{step - 1:08d}.pt" and f"last good checkpoint is {kept.latest()}" in line
    state = checkpoint.load(kept.latest())
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (run / "summary.json").exists()
    end = events.read(run)[-1]  # the report's failures section reads it
    assert (end["event"], end["outcome"], end["step"]) == ("end", "failed", step) and "non-finite" in end["message"]


def _mount_tmpfs(path, size):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
        if os.environ.get("CI") == "true":
            raise AssertionError("CI runs as root and must be able to mount a tmpfs")
        pytest.skip("needs root to mount a small tmpfs")


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_the_results(tmp_path):
    probe = tmp_path / "probe"
    run_cli("train", "train.steps=2", *QUICK, "--run-dir", probe)
    size = (probe / "checkpoints" / "step_00000002.pt").stat().st_size
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, size * 3 // 2 + 200_000)  # room for one checkpoint and the small files, not two
    try:
        run = disk / "run"
        args = ["train.steps=30", "checkpoint.every=10", "log.every=5", "checkpoint.keep_last=3", *QUICK]
        proc = run_cli("train", *args, "--run-dir", run, check=False)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "unexpected pos" not in proc.stderr
        assert f"no space left on device while writing {run}/checkpoints/step_00000020.pt (" in proc.stderr
        assert "free of" in proc.stderr and f"on {disk})" in proc.stderr
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 30 and summary["test"]["accuracy"] > 0  # went on after the failed save at 20
        assert "step_00000030.pt" in proc.stderr.splitlines()[-1]  # the final save failed too: exit 1 says so
        assert summary["checkpoint"].endswith("step_00000010.pt") and "no space left" in summary["checkpoint_error"]
        assert checkpoint.load(run / "checkpoints" / "step_00000010.pt")["step"] == 10
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["split"] == "test"
        assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(disk)])


# ----------------------------------------------------- resume with changes
@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cosine") / "run"
    run_cli("train", "train.steps=30", "checkpoint.every=10", "log.every=5", *QUICK, "--run-dir", run)
    return run


def _snapshot(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
def test_resume_a_finished_run_says_so_and_appends_nothing(cosine_run):
    before = _snapshot(cosine_run)
    proc = run_cli("train", "train.steps=30", *QUICK, "--run-dir", cosine_run, "--resume", "auto")
    assert "finished at step 30 of 30; nothing to resume" in proc.stdout
    assert _snapshot(cosine_run) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, says",
    [
        (["train.steps=10"], "this run has 10 steps, but the checkpoint's run was planned for 30"),
        (["optim.name=sgd"], "optim.name: 'adamw' -> 'sgd'"),
        (["model.hidden=64"], "model.hidden: 128 -> 64"),
    ],
)
def test_resume_that_changes_the_run_is_refused_before_anything_is_written(cosine_run, tmp_path, change, says):
    copy = tmp_path / "copy"
    shutil.copytree(cosine_run, copy)
    before = _snapshot(copy)
    proc = run_cli("train", "train.steps=30", *QUICK, *change, "--run-dir", copy, "--resume", "auto", check=False)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert _snapshot(copy) == before  # config.yaml, summary.json and metrics.jsonl untouched


@pytest.mark.slow
def test_a_longer_resumed_run_replans_the_schedule(cosine_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(cosine_run, copy)
    proc = run_cli("train", "train.steps=60", "log.every=5", *QUICK, "--run-dir", copy, "--resume", "auto")
    assert "re-planned for 60 steps" in proc.stderr
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (copy / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "train"}  # fmt: skip
    assert lrs[35] > 1e-4 and lrs[55] > 0 and lrs[35] > lrs[45] > lrs[55]  # not the old plan's zero after step 30
    assert json.loads((copy / "summary.json").read_text())["steps"] == 60
