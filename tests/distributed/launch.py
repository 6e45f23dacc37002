"""Starting real multi-process jobs from tests: torchrun, or plain Slurm-style variables."""

import os
import random
import socket
import subprocess
import sys

QUIET = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(*args, nproc=2, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "hpc_dl", *map(str, args)]  # fmt: skip
    proc = subprocess.run(
        cmd, env={**os.environ, **QUIET, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"torchrun {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_env(rank: int, ntasks: int, port: int) -> dict:
    """What srun gives each task of a one-node job with --ntasks-per-node=ntasks."""
    return {
        "SLURM_JOB_ID": str(random.randint(10_000, 99_999)), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
        "SLURM_NTASKS": str(ntasks), "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": socket.gethostname(),
        "SLURM_TASKS_PER_NODE": str(ntasks), "MASTER_PORT": str(port),
    }  # fmt: skip


def srun_like(*args, ranks=(0, 1), ntasks=2) -> list[subprocess.Popen]:
    """One `python -m hpc_dl` process per rank with Slurm's variables and no torchrun."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "hpc_dl", *map(str, args)],
            env={**clean, **QUIET, **slurm_env(r, ntasks, port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in ranks
    ]
