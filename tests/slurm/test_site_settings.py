"""slurm/train.sbatch's site settings, checked without a cluster: stub srun/scontrol/torchrun on PATH
record what the template passes on, as a one-node job would run it, and stand in for a Slurm that
signals only the task process (proctrack/cgroup). (The two-node test cluster runs the same template
for real in test_sbatch.py: CPU binding, GRES, the InfiniBand host name, pre-emption.)"""

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.slurm import stubs

TRAIN = ROOT / "slurm" / "train.sbatch"
STUBS = {
    "srun": 'echo "$*" >> "$FAKE_SLURM/srun.calls"\nwhile [[ ${1:-} == -* ]]; do shift; done\nexec "$@"',
    "scontrol": '[ "$*" = "show hostnames node1" ] && echo node1',
    "scancel": "true",
    # What every rank would get: torchrun's arguments and its environment.
    "torchrun": 'printf "%q " "$@" > "$FAKE_SLURM/torchrun.args"\nenv > "$FAKE_SLURM/torchrun.env"',
}


@pytest.fixture
def job(tmp_path):
    """Runs the template as Slurm would on one node (job 42); returns (process, torchrun args, rank env)."""
    bin_dir = stubs.install(tmp_path, STUBS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "HPC_DL_", "GLOO_"))}
    base = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM": str(tmp_path),
            "PROJECT": str(tmp_path), "VENV": str(tmp_path / "venv"), "SLURM_JOB_ID": "42",
            "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1", "SLURM_SUBMIT_DIR": str(tmp_path)}  # fmt: skip

    def run(**variables):
        proc = subprocess.run(["bash", str(TRAIN), "configs/digits_cnn.yaml"], env={**base, **variables}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        args_file, env_file = tmp_path / "torchrun.args", tmp_path / "torchrun.env"
        args = shlex.split(args_file.read_text()) if args_file.exists() else None
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line) if args else None
        return proc, args, env

    return tmp_path, run


def test_the_step_gets_the_jobs_cpus_per_task(job):
    """srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05); where tasks are bound to
    cores, the step would otherwise be held to one core."""
    tmp, run = job
    proc, _, _ = run(SLURM_CPUS_PER_TASK="16")
    assert proc.returncode == 0, proc.stderr
    assert "--cpus-per-task=16" in (tmp / "srun.calls").read_text().split()


@pytest.mark.parametrize(
    "gpus, nproc",
    [
        ({"SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_NODE": "4"}, 2),  # --gres=gpu:2 over the template's 4
        ({"SLURM_GPUS_PER_NODE": "h100:4"}, 4),  # a Slurm that sets only the request
        ({}, 1),  # a CPU partition
    ],
)
def test_one_process_per_gpu_the_node_got(job, gpus, nproc):
    _, run = job
    proc, args, _ = run(**gpus)
    assert proc.returncode == 0, proc.stderr
    assert f"--nproc-per-node={nproc}" in args


def test_the_ranks_log_nccl_into_a_folder_per_job(job):
    """No quiet NCCL_DEBUG=WARN in the ranks' way: hpc_dl captures NCCL's INIT/NET lines (and
    warnings) at INFO into HPC_DL_NCCL_LOG_DIR, where preflight reads the transport."""
    tmp, run = job
    proc, _, env = run()
    assert proc.returncode == 0, proc.stderr
    assert env["HPC_DL_NCCL_LOG_DIR"] == f"{tmp}/nccl-42" and "NCCL_DEBUG" not in env
    _, _, env = run(NCCL_DEBUG="INFO", HPC_DL_NCCL_LOG_DIR="/scratch/nccl")  # the user's choices stay
    assert env["NCCL_DEBUG"] == "INFO" and env["HPC_DL_NCCL_LOG_DIR"] == "/scratch/nccl"


SITE = """
module() { echo "module $*" >> "$FAKE_SLURM/module.calls"; }  # Lmod's shell function, as on a login shell
module load Stages/2025 CUDA NCCL
[ -z "$LMOD_SITE_NAME" ]  # site scripts read unset variables: fine under the template's set -u
export NCCL_SOCKET_IFNAME=ib0 NCCL_IB_HCA=mlx5 GLOO_SOCKET_IFNAME=ib0
export HPC_DL_MASTER_SUFFIX=i
"""


def test_a_site_file_sets_modules_interfaces_and_the_rendezvous_name(job):
    tmp, run = job
    (tmp / "juwels.sh").write_text(SITE)
    proc, args, env = run(HPC_DL_SETUP=str(tmp / "juwels.sh"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp / "module.calls").read_text() == "module load Stages/2025 CUDA NCCL\n"
    assert {k: env[k] for k in ("NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "GLOO_SOCKET_IFNAME")} == {
        "NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_HCA": "mlx5", "GLOO_SOCKET_IFNAME": "ib0"}  # fmt: skip
    assert "--rdzv-endpoint=node1i:20042" in args and env["MASTER_ADDR"] == "node1i"  # the InfiniBand name
    assert f"sourced {tmp}/juwels.sh" in proc.stdout


def test_slurm_site_sh_in_the_project_is_the_default(job):
    tmp, run = job
    (tmp / "slurm").mkdir()
    (tmp / "slurm" / "site.sh").write_text("export NCCL_IB_HCA=mlx5_0\n")
    _, _, env = run()
    assert env["NCCL_IB_HCA"] == "mlx5_0"


def test_a_missing_or_failing_site_file_stops_the_job_before_srun(job):
    tmp, run = job
    proc, _, _ = run(HPC_DL_SETUP=str(tmp / "nope.sh"))
    assert proc.returncode == 2 and f"HPC_DL_SETUP={tmp}/nope.sh is not a file" in proc.stderr
    (tmp / "bad.sh").write_text("module() { return 1; }\nmodule load CUDA/99\n")  # Lmod fails like this
    proc, _, _ = run(HPC_DL_SETUP=str(tmp / "bad.sh"))
    assert proc.returncode == 2 and f"sourcing {tmp}/bad.sh failed" in proc.stderr
    assert not (tmp / "srun.calls").exists()


# Slurm as at a site with proctrack/cgroup: `scancel --signal` reaches only a step's task process (the
# one srun started), not the processes below it.
TASK_ONLY = {
    "srun": 'echo "$$" > "$FAKE_SLURM/task.pid"\nwhile [[ ${1:-} == -* ]]; do shift; done\nexec "$@"',
    "scancel": 'kill -s "${1#--signal=}" "$(cat "$FAKE_SLURM/task.pid")"',
    "scontrol": '[ "$*" = "show hostnames node1" ] && echo node1 || echo "$*" >> "$FAKE_SLURM/scontrol.calls"',
    # One rank below torchrun, which ignores USR1 as the template makes torchrun do.
    "torchrun": 'LOCAL_RANK=0 "$RANK_PYTHON" "$FAKE_SLURM/rank.py" &\nwait $!',
}
RANK = """
import os, pathlib, signal, sys, time
fake = pathlib.Path(os.environ["FAKE_SLURM"])
def stop(*_):  # as hpc_dl's ranks do on the warning: checkpoint, then exit 75
    (fake / "rank.stopped").touch()
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
(fake / "rank.ready").touch()
while True:
    time.sleep(0.1)
"""


def test_the_warning_reaches_the_ranks_where_slurm_signals_only_the_task(job):
    """The batch script passes the warning on with `scancel --signal`; where that reaches only the task
    process (torchrun's parent), the per-node shell must hand it to the ranks below torchrun."""
    tmp, _ = job
    for name, body in TASK_ONLY.items():
        (tmp / "bin" / name).write_text(f"#!/bin/bash\n{body}\n")
    (tmp / "rank.py").write_text(RANK)
    env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "FAKE_SLURM": str(tmp), "PROJECT": str(tmp),
           "VENV": str(tmp / "venv"), "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1",
           "SLURM_SUBMIT_DIR": str(tmp), "RANK_PYTHON": sys.executable}  # fmt: skip
    batch = subprocess.Popen(["bash", str(TRAIN), "configs/digits_cnn.yaml"], env=env, cwd=tmp, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (tmp / "rank.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        batch.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@180 does before the time limit
        out, err = batch.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(batch.pid, signal.SIGKILL)  # whatever is left of the job
        batch.wait()
    assert (tmp / "rank.stopped").exists(), out + err
    assert "caught SIGUSR1" in out and "requeueing 42 (restart 1)" in out, out + err
    assert (tmp / "scontrol.calls").read_text() == "requeue 42\n"
