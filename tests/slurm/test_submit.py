"""`hpc-dl submit` (submitit): dry run and local executor anywhere; Slurm on the test cluster."""

import json
import subprocess

import pytest

from tests.conftest import CONFIGS, run_cli
from tests.slurm.jobs import job_field, wait_for, wait_until

pytestmark = pytest.mark.slow

MLP = [CONFIGS / "breast_cancer_mlp.yaml", "log.plots=false", "train.eval_every=0"]


def test_dry_run_prints_the_sbatch_script_from_config_and_flags(cli, tmp_path):
    flags = ["--nodes", "4", "--gpus-per-node", "4", "--partition", "gpu", "--constraint", "h100"]
    out = cli("submit", *MLP, "slurm.account=proj7", "slurm.time_min=90", *flags, "--dry-run",
              "--folder", tmp_path / "logs").stdout  # fmt: skip
    lines = set(out.splitlines())
    for flag in ("--nodes=4", "--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--account=proj7",
                 "--constraint=h100", "--time=90", "--signal=USR2@120", "--cpus-per-task=8"):  # fmt: skip
        assert f"#SBATCH {flag}" in lines, flag
    assert "submitit.core._submit" in out and not (tmp_path / "logs").exists()  # nothing submitted


def test_bad_config_is_refused_before_submitting(cli, tmp_path):
    proc = cli("submit", *MLP, "slurm.nodes=0", "--dry-run", check=False)
    assert proc.returncode == 2 and "slurm.nodes" in proc.stderr


def test_local_executor_runs_the_same_job(cli, tmp_path):
    out = cli("submit", *MLP, "train.steps=30", f"log.dir={tmp_path}/runs", "--local", "--wait",
              "--folder", tmp_path / "logs" / "%j", cwd=tmp_path).stdout  # fmt: skip
    assert "submitted job" in out and "done: test accuracy" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 30


@pytest.mark.slurm
def test_two_node_job_through_submitit(slurm, tmp_path):
    out = run_cli("submit", *MLP, "dist.strategy=ddp", "train.steps=40", f"log.dir={tmp_path}/runs", "--nodes", "2",
                  "--cpus-per-task", "1", "--time-min", "15", "--wait", "--folder", tmp_path / "logs" / "%j",
                  cwd=tmp_path).stdout  # fmt: skip
    job = out.split("submitted job ")[1].split()[0]
    summary = json.loads((tmp_path / "runs" / f"breast_cancer-mlp-job{job}" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 40 and "done: test accuracy" in out


@pytest.mark.slurm
def test_submitit_job_checkpoints_requeues_and_resumes(slurm, tmp_path):
    flags = ["--nodes", "2", "--cpus-per-task", "1", "--folder", tmp_path / "logs" / "%j"]
    out = run_cli("submit", *MLP, "dist.strategy=ddp", "train.steps=3000", "log.every=25", f"log.dir={tmp_path}/runs",
                  *flags, cwd=tmp_path).stdout  # fmt: skip
    job = out.split("submitted job ")[1].split()[0]
    run_dir = tmp_path / "runs" / f"breast_cancer-mlp-job{job}"
    log = tmp_path / "logs" / job / f"{job}_0_log.out"
    metrics = run_dir / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and metrics.read_text(), what="training")
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)  # submitit's warning, sent now
    wait_for(job, {"PENDING"}, timeout=180, log=log)  # requeued; it starts again about 11 s later
    assert wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, log=log) == "COMPLETED", log.read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3000 and summary["resumed_from"] and job_field(job, "Restarts") == "1"
    text = log.read_text()
    assert "stopped by SIGUSR2 after step" in text and "Slurm restart 1" in text
