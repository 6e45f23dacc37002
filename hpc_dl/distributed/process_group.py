"""The process group, and start-up checks that fail with an explanation instead of hanging.

Every rank checks in on the rendezvous store with its host and process id before
any collective runs. Rank 0 waits for all of them for ``dist.startup_timeout_s`` and
otherwise fails naming the ranks (and, under Slurm, the hosts) that never came.
Two time-outs, because start-up on a big allocation is slow (torchtitan uses 300 s)
and a hung training step should end the job sooner: the start-up one until the first
optimizer step completes, then ``dist.timeout_s`` for every collective.
"""

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hpc_dl.distributed import hang, preflight
from hpc_dl.distributed.cluster import World
from hpc_dl.errors import JobError, UserError, first_line

FORMED = False  # set once this process has joined a process group (see cli.main)


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(addr)).is_loopback
    except (OSError, ValueError):
        return False


def check(world: World, env=None) -> None:
    """Catch the misconfigurations that otherwise end in a hang or a world of one."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" in env and world.launcher == "torchrun" and "SLURM_NNODES" in env:
        expected = int(env["SLURM_NNODES"]) * world.local_world_size
        if world.world_size != expected:
            raise UserError(
                f"WORLD_SIZE={world.world_size} but the Slurm allocation has {env['SLURM_NNODES']} node(s) x "
                f"{world.local_world_size} process(es) per node = {expected}: is torchrun's --nnodes equal to "
                "$SLURM_NNODES, and does every node run one torchrun?"
            )
    if world.launcher == "slurm" and "SLURM_NTASKS" in env and world.world_size != int(env["SLURM_NTASKS"]):
        raise UserError(f"world size {world.world_size} does not match SLURM_NTASKS={env['SLURM_NTASKS']}")
    if world.nnodes > 1 and _is_loopback(world.master_addr):
        raise UserError(
            f"MASTER_ADDR={world.master_addr} is this machine's loopback address, but the job spans "
            f"{world.nnodes} nodes: each node would form its own world. Use the first host of the "
            "allocation, e.g. MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)"
        )
    if torch.cuda.is_available() and world.local_world_size > torch.cuda.device_count():
        raise UserError(
            f"{world.local_world_size} processes per node but {torch.cuda.device_count()} GPU(s) are visible on "
            f"{socket.gethostname()} (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')}): "
            "match --nproc_per_node / --ntasks-per-node to --gpus-per-node"
        )


def _store(world: World, timeout: datetime.timedelta) -> dist.Store:
    # torchrun's agent already serves a store at MASTER_ADDR:MASTER_PORT; otherwise rank 0 hosts it.
    agent = world.launcher == "torchrun" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "False"
    host = not agent and world.rank == 0
    store = dist.TCPStore(world.master_addr, world.master_port, world.world_size, host, timeout=timeout,
                          wait_for_workers=False)  # fmt: skip
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # keys of an earlier attempt are stale
    return dist.PrefixStore(f"hpc_dl/attempt_{attempt}", store)


def _start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot, from /proc), which tells it apart from a
    later process that got the same PID; None for a process that has exited (or without /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else None  # Z: exited, not yet reaped


def check_in(
    store: dist.Store, world: World, timeout_s: float, prefix="checkin", named="dist.startup_timeout_s"
) -> list[dict]:
    """Every rank posts (host, pid, local rank); returns all of them, or raises naming the absent ranks."""
    me = {"rank": world.rank, "host": socket.gethostname(), "pid": os.getpid(), "local_rank": world.local_rank,
          "start": _start_time(os.getpid())}  # fmt: skip
    store.set(f"{prefix}/{world.rank}", json.dumps(me))
    keys = [f"{prefix}/{r}" for r in range(world.world_size)]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.check(keys):
            return [json.loads(store.get(k)) for k in keys]
        time.sleep(0.05)
    present = [json.loads(store.get(k)) for k in keys if store.check([k])]
    missing = sorted(set(range(world.world_size)) - {p["rank"] for p in present})
    seen = ", ".join("rank {rank} on {host}".format(**p) for p in present)
    late = describe_missing(missing, world)
    raise JobError(f"{late} did not start within {named} = {timeout_s:g} s; present: {seen}")


def describe_missing(ranks: list[int], world: World, checked_in: list[dict] | None = None) -> str:
    hosts = {p["rank"]: p["host"] for p in checked_in or []}
    where = []
    for r in ranks:
        host = hosts.get(r) or (world.expected_hosts[r] if r < len(world.expected_hosts) else None)
        where.append(f"{r}" + (f" ({host})" if host else ""))
    return ("ranks " if len(where) > 1 else "rank ") + ", ".join(where)


@dataclass
class Group:
    """The formed world: its store (for check-in and failure reports) and what each rank reported."""

    world: World
    store: dist.Store
    members: list[dict]
    timeout: tuple[str, float]  # the time-out in force: (its config key, seconds)
    dumps: Path | None = None  # where hang dumps go (the run directory's hang/), once there is one
    step: int | None = None  # the last optimizer step completed
    watchdog: hang.Watchdog | None = None

    def watch(self, folder: Path) -> None:
        """Hang dumps go to ``folder``; an earlier attempt's dumps are removed (each rank its own; rank 0
        those of ranks this world does not have)."""
        self.dumps, w = folder, self.world
        stale = [folder / f"rank{w.rank}.json"]
        if w.rank == 0 and folder.is_dir():
            stale += [p for p in folder.glob("rank*.json") if p.stem[4:].isdigit() and int(p.stem[4:]) >= w.world_size]
        for path in stale:
            path.unlink(missing_ok=True)
        self.watchdog = hang.Watchdog(folder, self.world.rank, self.members, self.timeout[1] / 2)

    def progress(self, step: int, training_timeout_s: float) -> None:
        """After each optimizer step: from the first on, collectives get the training time-out."""
        if self.timeout[0] != "dist.timeout_s":
            dist.distributed_c10d.set_timeout(datetime.timedelta(seconds=training_timeout_s))
            self.timeout = ("dist.timeout_s", training_timeout_s)
            if self.watchdog:
                self.watchdog.after = training_timeout_s / 2
        self.step = step
        if self.watchdog:
            self.watchdog.progress(step)

    def dump_trace(self, error: BaseException) -> None:
        if self.dumps:
            hang.dump(self.dumps, self.world.rank, self.step, self.members, first_line(error, 300))

    def hang_report(self) -> str:
        """The dumps' analysis (``hang.analyse``), or '' without any."""
        try:
            dumps = hang.read(self.dumps) if self.dumps and self.dumps.is_dir() else {}
        except ValueError:
            return ""
        return f"{hang.analyse(dumps, self.world.world_size)} (traces in {self.dumps})" if dumps else ""

    def close(self) -> None:
        if self.watchdog:
            self.watchdog.close()

    def report_failure(self, message: str) -> None:
        """Leave a note for the other ranks before this one exits with an error."""
        try:
            self.store.set(f"failed/{self.world.rank}", message[:500])
        except Exception:  # the store itself may be what failed
            pass

    def diagnose(self, error: BaseException, wait_s: float = 5.0) -> str | None:
        """After a collective failed: which ranks are gone? None when every rank is alive
        (the error was an ordinary one)."""
        w = self.world
        try:
            self.store.set(f"alive/{w.rank}", "1")
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and not self.store.check([f"alive/{r}" for r in range(w.world_size)]):
                time.sleep(0.1)
            gone = [r for r in range(w.world_size) if not self.store.check([f"alive/{r}"])]
            reasons = {r: self.store.get(f"failed/{r}").decode() for r in gone if self.store.check([f"failed/{r}"])}
        except Exception:  # rank 0 hosted the store: it is the one that is gone
            host = self.members[0]["host"] if self.members else "?"
            return f"rank 0 ({host}) failed or stopped responding: the rendezvous store it hosted is unreachable"
        if not gone:
            return None
        why = "; ".join(f"rank {r}: {m}" for r, m in reasons.items())
        seen = first_line(error, 200)
        who = describe_missing(gone, w, self.members)
        ended = self.end_unresponsive([r for r in gone if r not in reasons])
        phase = "training" if self.timeout[0] == "dist.timeout_s" else "start-up"
        return (
            f"{who} failed or stopped responding" + (f" ({why})" if why else "")
            + f"; rank {w.rank} saw, during {phase} ({self.timeout[0]} = {self.timeout[1]:g} s): {seen}"
            + (f"; killed {', '.join(ended)} on this host, so that the job ends now" if ended else "")
        )  # fmt: skip

    def end_unresponsive(self, ranks: list[int]) -> list[str]:
        """SIGKILL those of ``ranks`` that run on this host; returns them as 'rank r (PID p)'. A rank
        that is stopped (SIGSTOP) or hung outlives its launcher's SIGTERM -- hpc_dl's ranks catch
        SIGTERM to checkpoint, and a stopped process runs no handler -- so the job would end only
        after torchrun's 30 s grace (Slurm's KillWait under plain srun)."""
        ended = []
        for r in ranks:
            m = self.members[r] if r < len(self.members) else {}
            if m.get("host") != socket.gethostname() or not m.get("start") or _start_time(m["pid"]) != m["start"]:
                continue  # another host, or the process is gone (its PID may be another's by now)
            try:
                os.kill(m["pid"], signal.SIGKILL)
                ended.append(f"rank {r} (PID {m['pid']})")
            except OSError:
                pass
        return ended


@contextlib.contextmanager
def named_failures(group: Group | None):
    """Run collectives; if one fails, raise a JobError naming the ranks that are gone (rather
    than a gloo/NCCL trace), and leave this rank's own error for the others to report."""
    try:
        yield
    except (UserError, JobError) as e:
        if group:
            group.report_failure(str(e))
        raise
    except Exception as e:
        if group:
            group.dump_trace(e)  # before diagnose says this rank is alive: the others read it after that
            diagnosis = group.diagnose(e)
            report = group.hang_report()
            if diagnosis:
                raise JobError(diagnosis + (f". {report}" if report else "") + preflight.nccl_warning_note()) from e
            group.report_failure(f"{type(e).__name__}: {e}")
            if report.startswith("collective mismatch"):
                raise JobError(f"{report}; rank {group.world.rank} saw: {first_line(e, 200)}") from e
        raise


def init(world: World, backend: str, timeout_s: float) -> Group:
    """Form the process group after every rank has checked in; ``timeout_s``: the start-up time-out."""
    timeout = datetime.timedelta(seconds=timeout_s)
    hang.enable()
    try:
        store = _store(world, timeout)
    except (RuntimeError, dist.DistError) as e:
        raise UserError(
            f"rank {world.rank} could not reach the rendezvous at {world.master_addr}:{world.master_port} "
            f"within {timeout_s:g} s ({first_line(e)})"
        ) from e
    global FORMED
    FORMED = True
    members = check_in(store, world, timeout_s)
    dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.world_size, timeout=timeout)
    return Group(world, store, members, ("dist.startup_timeout_s", timeout_s))
