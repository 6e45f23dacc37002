"""Who is who in a job, and the Slurm rules everything else takes from here (no torch:
``hpc-dl submit``, the batch template and the login node import this alone).

Launchers: one plain process (``single``), torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR/PORT) and plain ``srun`` (SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID and the node list). Under Slurm the first node hosts the rendezvous on a
port derived from the job id, so two jobs sharing a node do not collide
(HPC_DL_MASTER_SUFFIX is appended to its name where sites name the InfiniBand interface
<host>i). ``python -m hpc_dl.distributed.cluster`` prints these rules for a batch script.
"""

import os
import re
import shlex
import sys
from dataclasses import dataclass, field


def job_id(env=None) -> str | None:
    """The Slurm job this process belongs to; a task of a job array is ``<array job>_<task>``,
    the name ``scontrol requeue`` and ``scancel`` take for that task alone."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if job and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env.get('SLURM_ARRAY_JOB_ID') or job}_{env['SLURM_ARRAY_TASK_ID']}"
    return job


def restart_count(env=None) -> int:
    """How often Slurm has requeued this job (0 for its first run, and outside Slurm)."""
    env = os.environ if env is None else env
    value = env.get("SLURM_RESTART_COUNT") or "0"
    return int(value) if value.isdigit() else 0


def rendezvous_port(env=None) -> int:
    """MASTER_PORT when set, else 20000 + job id mod 20000: one port per job on a shared node."""
    env = os.environ if env is None else env
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    job = (env.get("SLURM_JOB_ID") or "0").split("_")[0]
    return 20000 + int(job) % 20000 if job.isdigit() else 29500


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # single | torchrun | slurm
    nnodes: int = 1
    expected_hosts: list[str] = field(default_factory=list)  # host of each rank, where Slurm tells us

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.launcher != "single"


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list, e.g. ``gpu[01-03,07],login1`` -> gpu01 gpu02 gpu03 gpu07 login1
    (what ``scontrol show hostnames`` prints, which is not there inside most containers)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{n:0{len(lo)}d}")
    return hosts


def _tasks_per_node(spec: str) -> list[int]:
    """SLURM_TASKS_PER_NODE, e.g. ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            counts += [int(m[1])] * int(m[2] or 1)
    return counts


def detect(env=None) -> World:
    env = os.environ if env is None else env
    nnodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
    if "RANK" in env and "WORLD_SIZE" in env:
        world = World(
            rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun", nnodes=int(env.get("GROUP_WORLD_SIZE", nnodes) if "SLURM_JOB_ID" in env else 1),
        )  # fmt: skip
        return world
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        per_node = _tasks_per_node(env.get("SLURM_TASKS_PER_NODE", ""))
        expected = [h for h, n in zip(hosts, per_node) for _ in range(n)]  # Slurm's default block distribution
        suffix = env.get("HPC_DL_MASTER_SUFFIX", "")  # where a node's InfiniBand name is <host><suffix>
        return World(
            rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=int(env.get("SLURM_NTASKS_PER_NODE") or (per_node[0] if per_node else 1)),
            master_addr=env.get("MASTER_ADDR") or (hosts[0] + suffix if hosts else "127.0.0.1"),
            master_port=rendezvous_port(env), launcher="slurm", nnodes=nnodes,
            expected_hosts=expected if len(expected) == int(env["SLURM_NTASKS"]) else [],
        )  # fmt: skip
    return World()


def shell(env=None) -> str:
    """The rules as shell assignments, for ``eval`` in a batch script (values quoted)."""
    values = {"JOB": job_id(env) or "", "RESTART": restart_count(env), "MASTER_PORT": rendezvous_port(env)}
    return "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in values.items())


if __name__ == "__main__":
    sys.stdout.write(shell())
