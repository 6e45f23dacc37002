"""Preflight: before spending an allocation, check that every rank is there, what it
runs on, and that an all-reduce gives the right answer at a plausible speed.

Bus bandwidth follows nccl-tests: algbw = bytes / time, busbw = algbw * 2(n-1)/n
for all-reduce, comparable across world sizes.
"""

import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hpc_dl.errors import JobError


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _time_all_reduce(tensor: torch.Tensor, repeats: int) -> float:
    """Median seconds of one all-reduce, after a warm-up; device events on GPUs."""
    for _ in range(2):
        dist.all_reduce(tensor)
    times = []
    for _ in range(repeats):
        if tensor.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist.all_reduce(tensor)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def capture_nccl_log() -> None:
    """Send NCCL's INIT/NET log lines to a file (not the console) so preflight can tell which
    transport NCCL chose. Must run before the first NCCL communicator; a user's own
    NCCL_DEBUG setting is left alone."""
    if "NCCL_DEBUG" in os.environ:
        return
    folder = Path(tempfile.gettempdir()) / f"hpc_dl-nccl-{os.environ.get('SLURM_JOB_ID') or os.getppid()}"
    folder.mkdir(exist_ok=True)
    os.environ.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,NET", NCCL_DEBUG_FILE=str(folder / "%h.%p.log"))
    os.environ["HPC_DL_NCCL_LOG"] = str(folder / f"{socket.gethostname()}.{os.getpid()}.log")


def nccl_transport(log: str | None = None) -> str | None:
    """Which network transport NCCL chose, from this process's NCCL log: 'IB', 'Socket', or None
    when unknown (no log, or no network used, as within one node)."""
    path = Path(log or os.environ.get("HPC_DL_NCCL_LOG", ""))
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    for transport in ("NET/IB", "NET/Socket"):
        if transport in text:
            return transport.split("/")[1]
    return None


def run(strategy, megabytes: float = 16.0, repeats: int = 5) -> list[dict]:
    """Every rank reports; raises JobError with the table if any rank saw a wrong result."""
    device, n, rank = strategy.device, strategy.world_size, strategy.rank
    me = {
        "rank": rank,
        "host": socket.gethostname(),
        "local_rank": strategy.world.local_rank,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "free_gib": round(_free_memory(device) / 2**30, 1),
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None,
    }
    # Every rank contributes rank + 1: the sum is known, so every element can be checked.
    probe = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(probe)
    me["all_reduce_ok"] = bool((probe == n * (n + 1) / 2).all())
    payload = torch.ones(int(megabytes * 2**20 / 4), device=device)
    seconds = _time_all_reduce(payload, repeats)
    algbw = payload.numel() * 4 / seconds / 1e9
    me["busbw_gbs"] = round(algbw * 2 * (n - 1) / n, 2)
    me["transport"] = nccl_transport() if device.type == "cuda" else "gloo"
    report = strategy.gather_object(me)
    if not all(r["all_reduce_ok"] for r in report):
        bad = [r["rank"] for r in report if not r["all_reduce_ok"]]
        raise JobError(f"preflight: all-reduce gave a wrong result on rank(s) {bad}\n{format_report(report)}")
    return report


def format_report(report: list[dict]) -> str:
    cols = ["rank", "host", "local_rank", "device", "free_gib", "nccl", "transport", "all_reduce_ok", "busbw_gbs"]
    rows = [[str(r.get(c)) for c in cols] for r in report]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [
        "preflight: "
        + ("all ranks checked in, all-reduce correct" if all(r["all_reduce_ok"] for r in report) else "FAILED")
    ]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    hosts = {r["host"] for r in report}
    if len(hosts) > 1 and any(r["transport"] == "Socket" for r in report):
        lines.append("warning: NCCL uses TCP sockets between nodes, not InfiniBand: expect a fraction of the "
                     "bandwidth. Inside a container, check that the IB user-space libraries are bound in.")  # fmt: skip
    return "\n".join(lines)
