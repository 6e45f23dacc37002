"""Which collective a job hung in, and which ranks never reached it.

PyTorch's flight recorder keeps, per rank, a ring buffer of the last collectives it
entered (process group, sequence number, operation, tensor sizes): NCCL and gloo alike.
hpc_dl turns it on for every distributed run (``ENTRIES`` entries: a few hundred bytes
each, recorded on the host when a collective is issued). When a collective times out or
a rank is named as gone, every reachable rank writes its recent entries as JSON into
``RUN_DIR/hang/rank<r>.json``; a watchdog thread also writes them when no step has
completed for half of ``dist.timeout_s``, so a job that Slurm kills while it hangs still
leaves them. ``analyse`` reads those files (here, and in ``hpc-dl diagnose RUN_DIR``):
the earliest collective a rank is still at, the ranks at it, those that went on (it completed
for them), those that left no trace (with hosts), ranks that issued different collectives at
the same sequence number, the last completed step.

The files are JSON written by the job itself; reading them runs no code.
"""

import json
import os
import socket
import threading
import time
from pathlib import Path

ENTRIES = 2000  # TORCH_FR_BUFFER_SIZE unless the user set it
KEEP = 64  # entries per rank written to a dump: the hang is in the last few
FOLDER = "hang"


def enable() -> None:
    """Turn the flight recorder on; read by PyTorch when a process group is created."""
    os.environ.setdefault("TORCH_FR_BUFFER_SIZE", str(ENTRIES))


def _entries() -> list[dict]:
    import torch._C._distributed_c10d as c10d

    for name in ("_dump_fr_trace_json", "_dump_nccl_trace_json"):  # all backends; NCCL only in older torch
        dump = getattr(c10d, name, None)
        if dump is None:
            continue
        try:
            return json.loads(dump(True, False)).get("entries", [])  # collectives, no stack traces
        except Exception:  # noqa: BLE001 - a diagnosis must not raise over the error it explains
            continue
    return []


def _entry(e: dict) -> dict:
    pg = e.get("process_group") or ["?", "?"]
    return {
        "pg": str(pg[1] if len(pg) > 1 else pg[0]),
        "seq": int(e.get("collective_seq_id") or 0),
        "op": str(e.get("profiling_name", "?")).split(":", 1)[-1],
        "sizes": e.get("input_sizes"),
        "dtypes": e.get("input_dtypes"),
        "state": e.get("state"),
        "t": int(e.get("time_created_ns") or 0),  # this host's clock: compared within a rank only
    }


def dump(folder: Path, rank: int, step: int | None, members: list[dict], reason: str) -> Path | None:
    """Write this rank's recent collectives; returns the file, or None where it cannot be written."""
    entries = [_entry(e) for e in _entries() if not e.get("is_p2p")][-KEEP:]
    record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "step": step, "reason": reason[:300],
              "time": time.time(), "members": [{"rank": m["rank"], "host": m["host"]} for m in members],
              "entries": entries}  # fmt: skip
    path = folder / f"rank{rank}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    except OSError:
        return None
    return path


def read(folder: Path) -> dict[int, dict]:
    """The dumps in ``folder`` by rank; ValueError naming a file that is not one."""
    dumps = {}
    for path in sorted(folder.glob("rank*.json")):
        try:
            record = json.loads(path.read_text())
            rank, record["host"] = int(record["rank"]), str(record["host"])
            record["members"] = [{"rank": int(m["rank"]), "host": str(m["host"])} for m in record.get("members", [])]
            record["entries"] = [_checked(e) for e in record["entries"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a hang dump written by hpc_dl ({type(e).__name__}: {e})") from e
        dumps[rank] = record
    return dumps


def _checked(e: dict) -> dict:
    """A dumped entry with the types the analysis relies on (a crafted file fails here, named)."""
    sizes, dtypes = e.get("sizes") or [], e.get("dtypes") or []
    if not (isinstance(sizes, list) and all(isinstance(s, list) for s in sizes) and isinstance(dtypes, list)):
        raise TypeError("sizes and dtypes must be lists")
    return {**e, "pg": str(e["pg"]), "seq": int(e["seq"]), "op": str(e["op"]), "sizes": sizes, "dtypes": dtypes,
            "t": int(e.get("t") or 0)}  # fmt: skip


def _describe(e: dict) -> str:
    sizes = "x".join(str(s) for s in e["sizes"][0]) if e.get("sizes") and e["sizes"][0] else "-"
    dtype = e["dtypes"][0] if e.get("dtypes") else ""
    return f"{e['op']} #{e['seq']} on process group {e['pg']} ({sizes} {dtype})".replace(" )", ")")


def analyse(dumps: dict[int, dict], world_size: int | None = None) -> str:
    """One line: the collective, the ranks at it, ahead of it or without a trace (with hosts), or a mismatch."""
    if not dumps:
        return "no hang dumps"
    hosts = {}
    for d in dumps.values():
        hosts.update({int(m["rank"]): m["host"] for m in d.get("members", [])})
        hosts[int(d["rank"])] = d["host"]
    n = world_size or max(len(hosts), max(dumps) + 1)

    def who(ranks) -> str:
        named = ", ".join(f"{r} ({hosts[r]})" if r in hosts else str(r) for r in ranks)
        return ("ranks " if len(ranks) > 1 else "rank ") + named

    steps = [d["step"] for d in dumps.values() if d.get("step") is not None]
    tail = f"; last completed step {max(steps)}" if steps else ""
    # Where the job stopped: the process group most ranks issued their newest collective on
    # (sequence numbers count per group; times compare only within one rank).
    votes = [max(d["entries"], key=lambda e: e.get("t", 0))["pg"] for d in dumps.values() if d["entries"]]
    if not votes:
        return f"no collective recorded by {who(sorted(dumps))}{tail}"
    pg = max(set(votes), key=votes.count)
    last = {r: max(e["seq"] for e in d["entries"] if e["pg"] == pg)
            for r, d in dumps.items() if any(e["pg"] == pg for e in d["entries"])}  # fmt: skip
    # The earliest collective a rank is still at: those past it saw it complete (a ring can finish on
    # one rank while its neighbours still wait on the rank that stopped).
    seq = min(last.values())
    at = {r: e for r, d in dumps.items() for e in d["entries"] if e["pg"] == pg and e["seq"] == seq}
    kinds = {(e["op"], json.dumps(e["sizes"]), json.dumps(e["dtypes"])) for e in at.values()}
    if len(kinds) > 1:
        each = "; ".join(f"rank {r}: {_describe(e)}" for r, e in sorted(at.items()))
        return f"collective mismatch at #{seq} on process group {pg}: {each}{tail}"
    stuck = sorted(r for r, s in last.items() if s == seq)
    ahead = {r: s for r, s in last.items() if s > seq}
    elsewhere = sorted(r for r in dumps if r not in last)
    silent = sorted(set(range(n)) - set(dumps))
    parts = []
    if ahead:
        parts.append(f"{who(sorted(ahead))} went on to #{max(ahead.values())} (it completed for them)")
    if elsewhere:
        parts.append(f"{who(elsewhere)} issued nothing on that process group")
    if silent:
        parts.append(f"{who(silent)} left no trace (stopped, killed, or its node unreachable)")
    if not parts:
        parts.append("every rank issued it: a slow network or a fault inside the collective")
    return f"stopped at {_describe(at[stuck[0]])}, the last collective of {who(stuck)}; " + "; ".join(parts) + tail


class Watchdog:
    """Writes this rank's dump when no step has completed for ``after_s`` (a hang in the making);
    removes it again when the job moves on."""

    def __init__(self, folder: Path, rank: int, members: list[dict], after_s: float):
        self.folder, self.rank, self.members, self.after = folder, rank, members, after_s
        self.step, self.last = None, time.monotonic()
        self.written: Path | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hpc_dl-hang-watchdog", daemon=True)
        self.thread.start()

    def progress(self, step: int) -> None:
        self.step, self.last = step, time.monotonic()
        if self.written:
            self.written.unlink(missing_ok=True)
            self.written = None

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            idle = time.monotonic() - self.last
            if idle > self.after and self.written is None:
                self.written = dump(self.folder, self.rank, self.step, self.members,
                                    f"no step completed for {idle:.0f} s")  # fmt: skip

    def close(self) -> None:
        self.stop.set()
