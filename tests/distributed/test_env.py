"""The world from launcher variables, and the misconfigurations caught before any collective."""

import pytest

from hpc_dl.distributed import cluster, process_group
from hpc_dl.errors import UserError


def test_expand_hostlist_like_scontrol():
    assert cluster.expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert cluster.expand_hostlist("n[8-10]") == ["n8", "n9", "n10"]
    assert cluster.expand_hostlist("single") == ["single"]


def test_world_from_torchrun_variables():
    w = cluster.detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "n1", "MASTER_PORT": "29400"})  # fmt: skip
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.launcher) == (3, 8, 1, 2, "torchrun")
    assert (w.master_addr, w.master_port) == ("n1", 29400)


def test_world_from_plain_srun_variables():
    w = cluster.detect({
        "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_ID": "123456",
    })  # fmt: skip
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.launcher) == (5, 8, 1, 4, "slurm")
    assert w.master_addr == "gpu07" and w.master_port == 20000 + 123456 % 20000
    assert w.expected_hosts == ["gpu07"] * 4 + ["gpu08"] * 4
    assert not cluster.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).distributed  # a one-task job: single


def test_torchrun_world_not_matching_the_allocation():
    w = cluster.detect({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="WORLD_SIZE=4 but the Slurm allocation has 2 node.* = 8"):
        process_group.check(w, {"SLURM_JOB_ID": "1", "SLURM_NNODES": "2"})


def test_loopback_master_on_a_multi_node_job():
    w = cluster.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "MASTER_ADDR": "localhost",
                    "SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "1(x2)"})  # fmt: skip
    with pytest.raises(UserError, match="MASTER_ADDR=localhost is this machine's loopback address.*2 nodes"):
        process_group.check(w, {})


def test_describe_missing_names_hosts():
    w = cluster.World(world_size=4, expected_hosts=["a", "a", "b", "b"])
    assert process_group.describe_missing([2, 3], w) == "ranks 2 (b), 3 (b)"
    assert process_group.describe_missing([1], w, [{"rank": 1, "host": "z"}]) == "rank 1 (z)"


def test_slurm_rules_written_once():
    """Job id (an array task is <array job>_<task>), restart count and rendezvous port: the rules the
    trainer, submit and the batch template all take from hpc_dl.distributed.cluster."""
    array = {"SLURM_JOB_ID": "107", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "7", "SLURM_RESTART_COUNT": "2"}
    assert cluster.job_id(array) == "100_7" and cluster.job_id({"SLURM_JOB_ID": "42"}) == "42"
    assert cluster.job_id({}) is None
    assert cluster.restart_count(array) == 2 and cluster.restart_count({}) == 0
    assert cluster.rendezvous_port({"SLURM_JOB_ID": "123456"}) == 20000 + 123456 % 20000
    assert cluster.rendezvous_port({"SLURM_JOB_ID": "123456", "MASTER_PORT": "29400"}) == 29400
    assert cluster.shell(array).splitlines() == ["JOB=100_7", "RESTART=2", f"MASTER_PORT={20000 + 107}"]
