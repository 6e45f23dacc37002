"""Collective bandwidth: all-reduce, all-gather and reduce-scatter over message sizes,
measured and reported the way nccl-tests does, on whatever world this process is in
(torchrun, srun, or a world of one): NCCL on GPUs, gloo on CPUs.

Definitions (nccl-tests, doc/PERFORMANCE.md). ``size`` is the whole buffer in bytes:
the all-reduce buffer, all-gather's output, reduce-scatter's input.
  algbw = size / time
  busbw = algbw * 2(n-1)/n   all-reduce
  busbw = algbw * (n-1)/n    all-gather, reduce-scatter
busbw is what each link carried, so it is comparable across world sizes and with the
hardware's link bandwidth. Time: the mean over ``iters`` back-to-back operations
(launch latency is amortised as in nccl-tests), the median of ``repeats`` such runs,
and the slowest rank's figure (a collective ends when its last rank does).

Correctness: before timing each size, every rank contributes rank + 1 (in fp32, where
these integers are exact) and every element of the result is checked on every rank
(sums n(n+1)/2; all-gather's chunk i holds i + 1).
"""

import datetime
import socket

import torch
import torch.distributed as dist

import hpc_dl
from hpc_dl.telemetry.timing import bus_factor, seconds_per_call

OPS = ("all_reduce", "all_gather", "reduce_scatter")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_bytes(text: str) -> int:
    """'8', '64K', '16M', '1G' (powers of 1024)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in _UNITS else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{text!r} is not a size such as 8, 64K, 16M or 1G")
    return int(number) * _UNITS[unit]


def sizes(min_bytes: int, max_bytes: int) -> list[int]:
    """Powers of two from min_bytes (rounded up to one) to max_bytes."""
    size = 1 << max(0, (min_bytes - 1).bit_length())
    out = []
    while size <= max_bytes:
        out.append(size)
        size *= 2
    return out


def _buffers(op: str, count: int, n: int, value: float, device, dtype):
    """(input, output) of one operation on ``count`` elements in all (the nccl-tests size)."""
    full = lambda k: torch.full((k,), value, device=device, dtype=dtype)  # noqa: E731
    if op == "all_reduce":
        x = full(count)
        return x, x
    if op == "all_gather":
        return full(count // n), torch.empty(count, device=device, dtype=dtype)
    return full(count), torch.empty(count // n, device=device, dtype=dtype)


# torch 2.14 renamed these (the old names warn on every rank); the GPU machines' torch 2.11 has only the old ones.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _launch(op: str, x, out) -> None:
    if op == "all_reduce":
        dist.all_reduce(x)
    elif op == "all_gather":
        _ALL_GATHER(out, x)
    else:
        _REDUCE_SCATTER(out, x)


def _correct(op: str, count: int, n: int, rank: int, device) -> bool:
    dtype = torch.float32
    x, out = _buffers(op, count, n, float(rank + 1), device, dtype)
    _launch(op, x, out)
    if op == "all_gather":
        expected = torch.arange(1, n + 1, device=device, dtype=dtype).repeat_interleave(count // n)
        return bool(torch.equal(out, expected))
    return bool((out == n * (n + 1) / 2).all())


def _seconds(op: str, x, out, iters: int, repeats: int, warmup: int) -> float:
    """Median over ``repeats`` of the mean time of ``iters`` back-to-back operations."""
    return seconds_per_call(lambda: _launch(op, x, out), x.device, repeats, warmup, calls=iters)


def iterations(size: int, iters: int | None) -> int:
    """Fewer back-to-back operations for big messages (at least 2), as a fixed rule so that
    every rank runs the same number."""
    return iters or max(2, min(20, 2**28 // size))


def run(strategy, ops=OPS, min_bytes=8, max_bytes=2**26, dtype="fp32", iters=None, repeats=5, warmup=3) -> dict:
    """Every rank runs this; the returned report (rank 0's view of all ranks) is the same on all."""
    device, n, rank = strategy.device, strategy.world_size, strategy.rank
    torch_dtype = DTYPES[dtype]
    elem = torch.tensor([], dtype=torch_dtype).element_size()
    rows = []
    for op in ops:
        factor = bus_factor(op, n)
        counts = sorted({max(n, size // elem // n * n) for size in sizes(min_bytes, max_bytes)})
        for count in counts:  # a whole number of elements per rank
            size = count * elem
            ok = _correct(op, count, n, rank, device)
            x, out = _buffers(op, count, n, 0.0, device, torch_dtype)  # zeros stay zeros: no overflow
            mine = _seconds(op, x, out, iterations(size, iters), repeats, warmup)
            seconds, all_ok = _slowest(mine, ok, device)
            algbw = size / seconds / 1e9
            rows.append({
                "op": op, "bytes": size, "count": count, "time_us": seconds * 1e6,
                "algbw_gbs": algbw, "busbw_gbs": algbw * factor, "correct": all_ok,
            })  # fmt: skip
            del x, out
    hosts = strategy.gather_object(socket.gethostname())
    return {
        "benchmark": "collectives",
        "definitions": "nccl-tests: algbw = size/time; busbw = algbw*2(n-1)/n (all_reduce), algbw*(n-1)/n (others)",
        "world_size": n,
        "nodes": len(set(hosts)),
        "hosts": sorted(set(hosts)),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "hpc_dl": hpc_dl.__version__,
        "date": datetime.date.today().isoformat(),
        "timing": f"mean of back-to-back operations, median of {repeats} repeats, slowest rank",
        "rows": rows,
        "peak_busbw_gbs": {op: max(r["busbw_gbs"] for r in rows if r["op"] == op) for op in ops},
        "all_correct": all(r["correct"] for r in rows),
    }


def _slowest(seconds: float, ok: bool, device) -> tuple[float, bool]:
    """The slowest rank's time, and whether every rank's result was right (one small all-reduce)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return seconds, ok
    t = torch.tensor([seconds, 0.0 if ok else 1.0], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), t[1].item() == 0.0


def human_bytes(size: int) -> str:
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def format_table(report: dict) -> str:
    lines = [
        f"collectives on {report['world_size']} rank(s), {report['nodes']} node(s), {report['device']}, "
        f"{report['backend']}, {report['dtype']} ({report['timing']})",
        f"{'op':<15} {'size':>6} {'time us':>11} {'algbw GB/s':>11} {'busbw GB/s':>11} {'correct':>8}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['op']:<15} {human_bytes(r['bytes']):>6} {r['time_us']:>11.1f} {r['algbw_gbs']:>11.3f} "
            f"{r['busbw_gbs']:>11.3f} {'yes' if r['correct'] else 'NO':>8}"
        )
    peaks = ", ".join(f"{op} {bw:.3f}" for op, bw in report["peak_busbw_gbs"].items())
    lines.append(f"peak busbw (GB/s): {peaks}")
    if not report["all_correct"]:
        lines.append("WRONG RESULTS: some collective returned a wrong value on some rank (see 'correct')")
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    from hpc_dl.telemetry.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for op in report["peak_busbw_gbs"]:
        rows = [r for r in report["rows"] if r["op"] == op]
        ax.plot([r["bytes"] for r in rows], [r["busbw_gbs"] for r in rows], marker="o", label=op)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title(f"{report['world_size']} ranks on {report['nodes']} node(s), {report['device']}, {report['backend']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
