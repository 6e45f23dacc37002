"""Preflight: before spending an allocation, check that every rank is there, what it
runs on, and that an all-reduce gives the right answer at a plausible speed.

Bus bandwidth follows nccl-tests: algbw = bytes / time, busbw = algbw * 2(n-1)/n
for all-reduce, comparable across world sizes.
"""

import os
import re
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from hpc_dl.errors import JobError
from hpc_dl.telemetry.timing import bus_factor, seconds_per_call


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _time_all_reduce(tensor: torch.Tensor, repeats: int) -> float:
    """Median seconds of one all-reduce, after a warm-up; device events on GPUs."""
    return seconds_per_call(lambda: dist.all_reduce(tensor), tensor.device, repeats)


def capture_nccl_log() -> None:
    """Have NCCL write its INIT/NET lines, and its warnings, to a file for this process, where
    preflight reads which transport NCCL chose. Must run before the first NCCL communicator.

    A quiet NCCL_DEBUG (unset, or WARN as sbatch templates and site modules set it) is raised to
    INFO into HPC_DL_NCCL_LOG_DIR/<host>.<pid>.log (default: a folder per job in the temporary
    directory), so the console stays as quiet. INFO or TRACE on the console is the user's choice
    and left alone; so is their own NCCL_DEBUG_FILE, which is read instead."""
    level = os.environ.get("NCCL_DEBUG", "").upper()
    if os.environ.get("NCCL_DEBUG_FILE"):
        if level in ("INFO", "TRACE"):
            os.environ["HPC_DL_NCCL_LOG"] = _nccl_file_name(os.environ["NCCL_DEBUG_FILE"])
        return
    if level not in ("", "WARN"):
        return
    default = Path(tempfile.gettempdir()) / f"hpc_dl-nccl-{os.environ.get('SLURM_JOB_ID') or os.getppid()}"
    folder = Path(os.environ.get("HPC_DL_NCCL_LOG_DIR") or default)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. a folder not bound into the container
        folder = default
        folder.mkdir(exist_ok=True)
    log = folder / f"{socket.gethostname()}.{os.getpid()}.log"
    # The literal name (NCCL's %h would be the host name cut at its first dot); '%' escaped for NCCL.
    os.environ.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,NET", NCCL_DEBUG_FILE=str(log).replace("%", "%%"))
    os.environ["HPC_DL_NCCL_LOG"] = str(log)


def _nccl_file_name(pattern: str) -> str:
    """The file NCCL writes for NCCL_DEBUG_FILE in this process: %h is the host name up to its
    first dot, %p the process id, %% a percent sign."""
    host = socket.gethostname().split(".")[0]
    return re.sub(r"%(.)", lambda m: {"h": host, "p": str(os.getpid()), "%": "%"}.get(m[1], m[0]), pattern)


def _nccl_log() -> str:
    path = Path(os.environ.get("HPC_DL_NCCL_LOG", ""))
    return path.read_text(errors="replace") if path.is_file() else ""


def nccl_transport(log: str | None = None) -> str | None:
    """Which network transport NCCL chose, from this process's NCCL log: 'IB', 'Socket' (or a
    plugin's name, e.g. 'IBext_v8'), or None when unknown (no log, or no network used, as within
    one node). NCCL says it in one line, "Using network IB"; older logs only name the transport
    that found devices ("NET/IB : Using ..."). A fallback also has "NET/IB : No device found.",
    so the mere mention of NET/IB proves nothing."""
    if log is not None:
        path = Path(log)
        text = path.read_text(errors="replace") if path.is_file() else ""
    else:
        text = _nccl_log()
    chosen = re.search(r"NCCL INFO Using network (.+)$", text, re.MULTILINE)
    if chosen:
        return chosen[1].strip()
    for transport in ("IB", "Socket"):
        if f"NET/{transport} : Using" in text:
            return transport
    return None


def nccl_warning_note() -> str:
    """For an error message: where this process's NCCL log is and its last warning, or ''."""
    warnings = [line.strip() for line in _nccl_log().splitlines() if " NCCL WARN " in line]
    if not warnings:
        return ""
    return f"; NCCL's last warning: {warnings[-1][:300]} (log: {os.environ['HPC_DL_NCCL_LOG']})"


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
    me["busbw_gbs"] = round(algbw * bus_factor("all_reduce", n), 2)
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
