"""Preflight: before spending an allocation, check that every rank is there, what it
runs on, that an all-reduce gives the right answer at a plausible speed, and that no
node is much slower than the others (the whole job would run at its pace).

Bus bandwidth follows nccl-tests: algbw = bytes / time, busbw = algbw * 2(n-1)/n
for all-reduce, comparable across world sizes.

Node health: every rank times a square matmul and, on GPUs, a pinned host-to-device
copy, as total time over back-to-back calls (not a median: a rank slowed now and then
must show). With several hosts, one rank per node all-reduces with the next node's in a
ring of node pairs; disjoint pairs run at once, so it takes at most three rounds
whatever the node count. ``outliers`` then compares each node with the median of the
others, and each rank's matmul rate with the other ranks' (a bad GPU on one node).
Outliers are a warning with an ``sbatch --exclude`` line, not a failure: a slow node
still trains.
"""

import math
import os
import re
import socket
import statistics
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


MARGIN = 0.25  # as log.straggler_margin: slower than the others' median by more than this fraction
MATMUL_SECONDS = 0.2  # per rank, at the start of every distributed run: small on a CPU test machine
H2D_BYTES = 64 * 2**20  # enough to reach PCIe's rate; pinning it takes a few ms
FIGURES = {  # per-node figure: what the line calls it, its unit
    "matmul_tflops": ("matmul", "TFLOP/s"),
    "h2d_gbs": ("host-to-device copy", "GB/s"),
    "link_gbs": ("link", "GB/s"),
}


def _matmul_tflops(device: torch.device, seconds: float) -> float:
    """TFLOP/s of a square matmul, called back to back for about ``seconds`` (after a warm-up):
    bf16 (fp32 where a GPU lacks it) at n=8192 on GPUs, fp32 at n=512 on CPUs."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 512
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)

    def mm():
        torch.mm(a, b, out=out)

    once = seconds_per_call(mm, device, repeats=1, warmup=1)
    batch = max(1, int(0.02 / once))  # ~20 ms between clock reads: few GPU syncs, a close deadline
    calls, total = 0, 0.0
    while total < seconds or calls < 3:  # a deadline, not a count: a slowed rank costs no more time
        total += seconds_per_call(mm, device, repeats=1, warmup=0, calls=batch) * batch
        calls += batch
    return 2 * n**3 * calls / total / 1e12


def _h2d_gbs(device: torch.device, calls: int = 8) -> float:
    """GB/s of a copy from pinned host memory to the GPU, total time over ``calls`` copies."""
    host = torch.empty(H2D_BYTES, dtype=torch.uint8, pin_memory=True)
    dest = torch.empty(H2D_BYTES, dtype=torch.uint8, device=device)
    per_copy = seconds_per_call(lambda: dest.copy_(host, non_blocking=True), device, repeats=1, calls=calls)
    return H2D_BYTES / per_copy / 1e9


def node_rounds(n: int) -> list[list[tuple[int, int]]]:
    """The ring of node pairs (i, i+1 mod n) in rounds of disjoint pairs: even i, odd i, and for
    an odd n the pair that closes the ring. Two nodes make one pair, one node none."""
    if n < 3:
        return [[(0, 1)]] if n == 2 else []
    ring = [(i, (i + 1) % n) for i in range(n)]
    if n % 2 == 0:
        return [ring[0::2], ring[1::2]]  # the closing pair (n-1, 0) is odd and disjoint from the rest
    return [ring[0 : n - 1 : 2], ring[1 : n - 1 : 2], ring[-1:]]


def _time_node_pairs(hosts: list[str], payload: torch.Tensor, repeats: int) -> tuple[list[dict], list]:
    """All-reduce bandwidth of each node pair between the nodes' lowest ranks. ``hosts``: every
    rank's host, by rank. Returns the pairs this rank led (as the first node's), and the groups it
    is in, to destroy once every rank is done with them."""
    leaders: dict[str, int] = {}
    for rank, host in enumerate(hosts):
        leaders.setdefault(host, rank)
    nodes, me = list(leaders), dist.get_rank()
    rounds = node_rounds(len(nodes))
    # Every rank makes every group, in the same order: group names come from a counter, and NCCL may
    # split the default communicator, a collective over all ranks. Without TORCH_DIST_INIT_BARRIER
    # a rank outside a group returns at once.
    groups = [[dist.new_group([leaders[nodes[i]], leaders[nodes[j]]]) for i, j in pairs] for pairs in rounds]
    measured, mine = [], []
    for number, (pairs, made) in enumerate(zip(rounds, groups), 1):
        for (i, j), group in zip(pairs, made):
            ends = (leaders[nodes[i]], leaders[nodes[j]])
            if me not in ends:
                continue
            mine.append(group)

            def all_reduce(group=group):
                dist.all_reduce(payload, group=group)

            # total time, like the matmul: a link that drops now and then shows
            seconds = seconds_per_call(all_reduce, payload.device, repeats=1, calls=repeats)
            if me == ends[0]:
                busbw = payload.numel() * payload.element_size() / seconds / 1e9 * bus_factor("all_reduce", 2)
                measured.append({"nodes": [nodes[i], nodes[j]], "ranks": list(ends), "round": number,
                                 "busbw_gbs": _round(busbw)})  # fmt: skip
    return measured, mine


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def run(strategy, megabytes: float = 16.0, repeats: int = 5, matmul_seconds: float = MATMUL_SECONDS) -> list[dict]:
    """Every rank reports; raises JobError with the table if any rank saw a wrong result.
    Rank rows carry matmul_tflops, h2d_gbs (None on CPUs) and the node pairs they timed."""
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
    hosts = strategy.gather_object(me["host"])  # also lines the ranks up: their matmuls overlap
    me["matmul_tflops"] = _round(_matmul_tflops(device, matmul_seconds))
    me["h2d_gbs"] = _round(_h2d_gbs(device)) if device.type == "cuda" else None
    payload = torch.ones(int(megabytes * 2**20 / 4), device=device)
    seconds = _time_all_reduce(payload, repeats)
    algbw = payload.numel() * 4 / seconds / 1e9
    me["busbw_gbs"] = round(algbw * bus_factor("all_reduce", n), 2)
    me["transport"] = nccl_transport() if device.type == "cuda" else "gloo"
    me["pairs"], groups = _time_node_pairs(hosts, payload, repeats)
    report = strategy.gather_object(me)
    for group in groups:  # after the gather, so both ends are done: frees NCCL's buffers before training
        dist.destroy_process_group(group)
    if not all(r["all_reduce_ok"] for r in report):
        bad = [r["rank"] for r in report if not r["all_reduce_ok"]]
        raise JobError(f"preflight: all-reduce gave a wrong result on rank(s) {bad}\n{format_report(report)}")
    return report


# ---------------------------------------------------------------- analysis (pure: crafted reports test it)
def node_pairs(report: list[dict]) -> list[dict]:
    """The node pairs timed, each once: {"nodes": [a, b], "ranks": [r, s], "round": k, "busbw_gbs": x}."""
    return sorted((p for r in report for p in r.get("pairs") or []), key=lambda p: (p["round"], p["nodes"]))


def _below(values: dict, margin: float) -> list[tuple]:
    """(key, value, median of the others) for each value below (1 - margin) x the median of the
    others' (not of all: with two, that would halve the gap)."""
    if len(values) < 2:
        return []
    slow = []
    for key, value in values.items():
        median = statistics.median(v for k, v in values.items() if k != key)
        if value < (1 - margin) * median:
            slow.append((key, value, median))
    return slow


def _per_node(report: list[dict]) -> dict[str, dict]:
    """host -> figure -> (value, rank or None): a node computes and copies at its slowest rank's
    rate; its link is its best pair's, so that a node is blamed only when all of its pairs are slow."""
    nodes: dict[str, dict] = {r["host"]: {} for r in report}
    for r in report:
        for figure in ("matmul_tflops", "h2d_gbs"):
            if r.get(figure) is not None and r[figure] < nodes[r["host"]].get(figure, (math.inf,))[0]:
                nodes[r["host"]][figure] = (r[figure], r["rank"])
    for pair in node_pairs(report):
        for host in pair["nodes"]:
            best = nodes.setdefault(host, {}).get("link_gbs", (0.0,))[0]
            nodes[host]["link_gbs"] = (max(best, pair["busbw_gbs"]), None)
    return nodes


def outliers(report: list[dict], margin: float = MARGIN) -> list[dict]:
    """Nodes slower than the other nodes' median by more than ``margin`` (a fraction; 0: off) in
    matmul rate, host-to-device copy or link, and single ranks slower in matmul rate than the other
    ranks' median (on nodes not named for it already). Each: node, figure, value, median,
    against ("nodes" or "ranks"), rank (the slow rank; None for a link)."""
    if not margin:
        return []
    found = []
    nodes = _per_node(report)
    for figure in FIGURES:
        values = {host: f[figure][0] for host, f in nodes.items() if figure in f}
        for host, value, median in _below(values, margin):
            found.append({"node": host, "rank": nodes[host][figure][1], "figure": figure, "value": value,
                          "median": median, "against": "nodes"})  # fmt: skip
    named = {o["node"] for o in found if o["figure"] == "matmul_tflops"}
    rates = {r["rank"]: r["matmul_tflops"] for r in report if r.get("matmul_tflops") is not None}
    host = {r["rank"]: r["host"] for r in report}
    for rank, value, median in _below(rates, margin):
        if host[rank] not in named:
            found.append({"node": host[rank], "rank": rank, "figure": "matmul_tflops", "value": value,
                          "median": median, "against": "ranks"})  # fmt: skip
    return found


def outlier_lines(found: list[dict]) -> list[str]:
    """One line per outlier, then one ``sbatch --exclude`` line with every node named."""
    lines = []
    for o in found:
        label, unit = FIGURES[o["figure"]]
        if o["against"] == "ranks":
            who, whose = f"rank {o['rank']} ({o['node']})", ""
        else:
            who = f"node {o['node']}"
            whose = " (its best pair)" if o["figure"] == "link_gbs" else f" (rank {o['rank']}, its slowest)"
        lines.append(f"preflight: {who} is slow: {label} {o['value']:.3g} {unit}{whose} vs {o['median']:.3g} "
                     f"(median of the other {o['against']})")  # fmt: skip
    if found:
        exclude = ",".join(dict.fromkeys(o["node"] for o in found))
        lines.append(f"preflight: the job runs at its slowest rank's pace; next time: sbatch --exclude={exclude}")
    return lines


def format_report(report: list[dict], margin: float = MARGIN) -> str:
    cols = ["rank", "host", "local_rank", "device", "free_gib", "nccl", "transport", "all_reduce_ok", "busbw_gbs",
            "matmul_tflops"] + (["h2d_gbs"] if any(r.get("h2d_gbs") is not None for r in report) else [])  # fmt: skip
    rows = [[str(r.get(c)) for c in cols] for r in report]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [
        "preflight: "
        + ("all ranks checked in, all-reduce correct" if all(r["all_reduce_ok"] for r in report) else "FAILED")
    ]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    hosts = {r["host"] for r in report}
    pairs = node_pairs(report)
    if pairs:
        lines.append("node pairs (an all-reduce between each node's lowest ranks; a round's pairs at once):")
        table = [["round", "nodes", "ranks", "busbw_gbs"]]
        table += [[str(p["round"]), " - ".join(p["nodes"]), ",".join(map(str, p["ranks"])), str(p["busbw_gbs"])]
                  for p in pairs]  # fmt: skip
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    elif len(hosts) == 1 and any("pairs" in r for r in report):
        lines.append("node pairs: none to time on one host")
    if len(hosts) > 1 and any(r["transport"] == "Socket" for r in report):
        lines.append("warning: NCCL uses TCP sockets between nodes, not InfiniBand: expect a fraction of the "
                     "bandwidth. Inside a container, check that the IB user-space libraries are bound in.")  # fmt: skip
    lines += outlier_lines(outliers(report, margin))
    return "\n".join(lines)
