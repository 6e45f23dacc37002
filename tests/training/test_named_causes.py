"""A run that dies of a non-finite gradient or of memory says which rank, at which step, and why;
every record carries each rank's peak memory; events.jsonl keeps the outcome."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_dl.telemetry import events
from hpc_dl.telemetry.metrics import read
from tests.distributed.launch import QUIET, free_port

QUICK = ["log.progress=plain", "log.plots=false", "log.utilisation=false", "log.wandb=false"]
POISONED = Path(__file__).with_name("poisoned_job.py")
TABLE = ["data.name=breast_cancer", "model.name=mlp", "train.steps=20", "log.every=5", *QUICK]


def _poisoned(run: Path, bad_rank: int, bad_step: int, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, **QUIET, "BAD_RANK": str(bad_rank), "BAD_STEP": str(bad_step)}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--master_port={free_port()}"] if nproc > 1 else [sys.executable]  # fmt: skip
    strategy = ["dist.strategy=ddp"] if nproc > 1 else []
    cmd = [*launcher, str(POISONED), "train", *TABLE, *strategy, "--run-dir", str(run)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def test_a_gradient_gone_nan_on_one_rank_is_named_with_its_step_though_the_loss_stayed_finite(tmp_path):
    proc = _poisoned(tmp_path / "run", bad_rank=1, bad_step=3, nproc=2)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert lines, proc.stderr[-3000:]
    # rank 0's own gradient was finite: only the all-reduce spread rank 1's NaN to it
    expected = "the gradient (before the all-reduce, with a finite loss) became non-finite at step 3 on rank 1 ("
    assert all(expected in line for line in lines), lines
    assert "Traceback" not in proc.stderr.split("error:")[0][-2000:]
    end = events.read(tmp_path / "run")[-1]
    assert end["outcome"] == "failed" and expected in end["message"]


def test_a_gradient_gone_nan_in_one_process_is_named(tmp_path):
    proc = _poisoned(tmp_path / "run", bad_rank=0, bad_step=4, nproc=1)
    assert proc.returncode == 1
    assert "error: the gradient (with a finite loss) became non-finite at step 4 on rank 0 (" in proc.stderr


def _limit_address_space(gib: float):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), resource.RLIM_INFINITY))

    return limit


def test_out_of_memory_names_the_rank_the_batch_and_the_model(tmp_path):
    # A node with 6 GiB of address space (ulimit -v, as some sites set) and one 2 GiB activation too many:
    # the CPU allocator's own error, raised in the first forward pass.
    run = tmp_path / "run"
    args = ["data.name=synthetic_tabular", "data.shape=[64]", "data.samples=16384", "data.batch_size=8192",
            "model.name=mlp", "model.hidden=[65536]", "train.steps=2", *QUICK]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "hpc_dl", "train", *args, "--run-dir", str(run)],
                          preexec_fn=_limit_address_space(6), capture_output=True, text=True, timeout=180,
                          env={**os.environ, **QUIET})  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: out of memory on rank 0 (") and "at step 1" in line, line
    assert (
        "batch 8192 x (64,) per micro-step" in line
        and f"model {64 * 65536 + 65536 + 65536 * 10 + 10:,} parameters" in line
    )
    assert "under an address-space limit of 6.0 GiB" in line and "Lower data.batch_size" in line
    assert "Traceback" not in proc.stderr
    end = events.read(run)[-1]
    assert end["outcome"] == "failed" and end["message"].startswith("out of memory on rank 0")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mem") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "hpc_dl", "train", *TABLE, "dist.strategy=ddp", "--run-dir", str(run)]  # fmt: skip
    subprocess.run(cmd, env={**os.environ, **QUIET}, check=True, capture_output=True, timeout=180)
    return run


def test_every_record_has_each_ranks_peak_memory(two_rank_run):
    train = [r for r in read(two_rank_run / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == 4
    for record in train:
        peaks = [r["mem_peak_gib"] for r in record["ranks"]]
        assert [r["rank"] for r in record["ranks"]] == [0, 1] and all(0.05 < p < 16 for p in peaks)
        assert record["mem_peak_gib"] == max(peaks)
    assert [r["mem_peak_gib"] for r in train] == sorted(r["mem_peak_gib"] for r in train)  # a peak so far
    summary = json.loads((two_rank_run / "summary.json").read_text())
    assert summary["mem_peak_gib"] == train[-1]["mem_peak_gib"]
    start, end = events.read(two_rank_run)
    assert (start["event"], start["world_size"], start["step"], end["outcome"], end["step"]) == (
        "start", 2, 0, "completed", 20)  # fmt: skip
