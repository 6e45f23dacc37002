import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# Runs started by tests stay off W&B unless a test asks for it (WANDB_MODE=offline); never online.
os.environ["WANDB_MODE"] = "disabled"


def run_cli(*args, cwd=None, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
    """Run ``python -m hpc_dl ARGS`` in a fresh process, as a user would."""
    # Not WANDB_SERVICE: a W&B run made inside pytest leaves it set, and a child connecting to
    # that process's wandb-core would have its run written (or not) by pytest's service.
    inherited = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "hpc_dl", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hpc-dl {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def cli():
    return run_cli


SECRET = "sk-test-0123456789abcdef-do-not-log"


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """`hpc-dl train` with no arguments (the embedded default), as a Slurm job would start
    it, with an API key in the environment that must not end up in any file. W&B logs offline,
    as on a compute node without internet."""
    cwd = tmp_path_factory.mktemp("default")
    env = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "1", "WANDB_MODE": "offline"}
    env |= {"WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET}
    proc = run_cli("train", cwd=cwd, env=env)
    return cwd / "runs" / "digits-cnn-job4242", proc


@pytest.fixture(scope="session")
def slurm():
    """The two-node Slurm test cluster (tests/slurm/cluster.py), started once for the session and stopped
    after it. Here rather than in tests/slurm/ so that tests/test_docs.py shares the same cluster."""
    from tests.slurm import cluster

    reason = cluster.unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Slurm test cluster cannot start under CI: {reason}")
        pytest.skip(f"Slurm test cluster: {reason}")
    c = cluster.Cluster.start()
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(c.env)
    try:
        yield c
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: without a device they are deselected, not failed (CI has no GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
