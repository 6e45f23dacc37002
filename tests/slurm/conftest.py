import os

import pytest

from tests.slurm import cluster


@pytest.fixture(scope="session")
def slurm():
    """The two-node test cluster, started once for the session and stopped after it."""
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
