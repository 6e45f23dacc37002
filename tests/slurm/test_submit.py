"""`hpc-dl submit` (submitit): dry run and local executor anywhere; Slurm on the test cluster (tasks
bound to cores; see tests/slurm/cluster.py)."""

import json
import shlex
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
    (srun,) = [shlex.split(line) for line in out.splitlines() if line.startswith("srun ")]
    assert srun[srun.index("--cpus-per-task") + 1] == "8"  # srun does not inherit it from sbatch (Slurm >= 22.05)
    assert "--wckey" not in out  # submitit's default would charge every job to wckey "submitit"
    # What runs in every task, and with which config:
    command = (f"#   hpc-dl train {MLP[0]} log.plots=false train.eval_every=0 slurm.account=proj7 slurm.time_min=90 "
               "'train.stop_signals=[USR2]' --resume auto")  # fmt: skip
    assert command in lines and "  account: proj7" in lines and "  stop_signals: [USR2]" in lines


def test_dry_run_needs_no_slurm_here(tmp_path):
    """A laptop preparing a job: no srun, sbatch or scontrol on PATH (submitit looks for srun)."""
    proc = run_cli("submit", *MLP, "--dry-run", env={"PATH": str(tmp_path)}, cwd=tmp_path, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "#SBATCH --nodes=1" in proc.stdout.splitlines()


def test_dry_run_with_gres_setup_lines_and_a_container(cli, tmp_path):
    flags = ["--gres", "gpu:h100:4", "--setup", "module load CUDA NCCL", "--setup", "export NCCL_IB_HCA=mlx5",
             "--container", "/p/images/hpc_dl.sif", "--bind", "/p/scratch", "--wckey", "ml", "--folder",
             tmp_path / "logs" / "%j"]  # fmt: skip
    out = cli("submit", *MLP, f"log.dir={tmp_path}/runs", *flags, "--dry-run").stdout
    lines = out.splitlines()
    for flag in ("--gres=gpu:h100:4", "--ntasks-per-node=4", "--wckey=ml"):  # one task per GRES GPU
        assert f"#SBATCH {flag}" in lines, flag
    assert not any(line.startswith("#SBATCH --gpus") for line in lines)
    setup = lines.index("# setup")
    assert lines[setup + 1 : setup + 3] == ["module load CUDA NCCL", "export NCCL_IB_HCA=mlx5"]
    (srun,) = [shlex.split(line) for line in lines if line.startswith("srun ")]
    container = srun[srun.index("apptainer") :]
    assert container[:4] == ["apptainer", "exec", "--nv", "--bind"]
    binds = [str(tmp_path / "logs"), str(tmp_path / "runs"), str(MLP[0].resolve().parent), "/p/scratch"]
    assert container[4].split(",") == binds  # submitit's folder, the runs, the config, and --bind
    assert container[5:] == ["/p/images/hpc_dl.sif", "python", "-u", "-m", "submitit.core._submit",
                             str(tmp_path / "logs" / "%j")]  # fmt: skip


def test_a_setup_line_is_one_line(cli):
    """Setup lines are shell by design, but one per entry: a control character in one is refused
    like in any other value written into the batch script."""
    proc = cli("config", 'slurm.setup=["module load CUDA", "echo a\\rb"]', check=False)
    assert proc.returncode == 2 and "slurm.setup[1] = 'echo a\\rb': control characters" in proc.stderr, proc.stderr


def test_gres_and_gpus_per_node_together_are_refused(cli):
    proc = cli("submit", *MLP, "--gres", "gpu:4", "--gpus-per-node", "4", "--dry-run", check=False)
    assert proc.returncode == 2 and "give one of them" in proc.stderr, proc.stderr


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
    out = run_cli("submit", *MLP, "dist.strategy=ddp", "train.steps=40", "log.every=20", f"log.dir={tmp_path}/runs",
                  "--nodes", "2", "--cpus-per-task", "2", "--time-min", "15", "--wait", "--folder",
                  tmp_path / "logs" / "%j", cwd=tmp_path).stdout  # fmt: skip
    job = out.split("submitted job ")[1].split()[0]
    run_dir = tmp_path / "runs" / f"breast_cancer-mlp-job{job}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 40 and "done: test accuracy" in out
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ranks = [r for r in records if "ranks" in r][-1]["ranks"]
    assert [r["cpus"] for r in ranks] == [2, 2], ranks  # each task may use its --cpus-per-task, not one core


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
