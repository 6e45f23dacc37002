"""What a run ran on: versions, device, host, git revision, Slurm variables.

Only named variables are recorded -- never the whole environment, which may
hold API keys or tokens.
"""

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

import hpc_dl

SLURM_VARS = (
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
    "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_LOCALID",
    "SLURM_CPUS_PER_TASK", "SLURM_GPUS_PER_NODE", "SLURM_JOB_PARTITION", "SLURM_JOB_ACCOUNT",
    "SLURM_RESTART_COUNT", "SLURM_CLUSTER_NAME",
)  # fmt: skip
OTHER_VARS = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA")


def git_revision() -> str | None:
    """The commit of the hpc_dl source tree, with '-dirty' if it has local changes."""
    root = Path(hpc_dl.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment() -> dict:
    cuda = torch.cuda.is_available()
    report = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hpc_dl": hpc_dl.__version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "command": sys.argv,
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
        "env": {k: os.environ[k] for k in OTHER_VARS if k in os.environ},
    }
    try:  # its metadata, not the module: importing torchvision takes a second
        report["torchvision"] = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        report["torchvision"] = None
    return report


def format_report(report: dict) -> str:
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:" + ("" if value else " (none)"))
            lines += [f"  {k} = {v}" for k, v in value.items()]
        elif isinstance(value, list):
            lines.append(f"{key}: {' '.join(value)}")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
