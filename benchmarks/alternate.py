"""A against B in one process, the protocol both overhead benchmarks share: pairs alternate
their order (A-B, B-A, ...) so drift on a shared machine hits both sides; the result is the
median of the per-pair ratios A/B, with the range and the raw times, and the machine's manifest."""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hpc_dl.telemetry import manifest


def arguments(doc: str) -> argparse.Namespace:
    """The command line both benchmarks take."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for both sides, applied after the benchmark's own (repeatable)",
    )  # fmt: skip
    return parser.parse_args()


def stamper(stamps: dict, device, sync_at: tuple[int, ...]) -> Callable[[int], None]:
    """``on_step`` for a timed run: the host clock after each step. On a GPU the host runs ahead of
    the kernels it queued, so at the steps the timing uses (``sync_at``) the clock is read after a
    device sync; syncing at every step would also charge host work that normally hides behind the GPU."""

    def stamp(step: int) -> None:
        if step in sync_at and device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.setdefault(step, time.perf_counter())

    return stamp


def alternate(a: str, b: str, run: Callable[[str, int], float], pairs: int) -> list[dict]:
    """``run(name, pair index)`` returns seconds per step; one dict {a: s, b: s} per pair."""
    out = []
    for i in range(pairs):
        times = {name: run(name, i) for name in ((a, b) if i % 2 == 0 else (b, a))}
        out.append(times)
        print(f"pair {i + 1}/{pairs}: {a} {times[a] * 1e3:.2f} ms/step, {b} {times[b] * 1e3:.2f} ms/step, "
              f"ratio {times[a] / times[b]:.4f}", file=sys.stderr, flush=True)  # fmt: skip
    return out


def report(benchmark: str, what: str, setup: dict, a: str, b: str, pairs: list[dict], out: Path | None) -> dict:
    """Print the summary; write the whole result as JSON to ``out`` when given."""
    ratios = [p[a] / p[b] for p in pairs]
    result = {
        "benchmark": benchmark,
        "what": what,
        "setup": setup,
        "median_ratio": statistics.median(ratios),
        "overhead_percent": (statistics.median(ratios) - 1) * 100,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "median_step_ms": {m: statistics.median(p[m] for p in pairs) * 1e3 for m in (a, b)},
        "pairs_ms": [{m: p[m] * 1e3 for m in (a, b)} for p in pairs],
        "manifest": manifest.environment(),
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("pairs_ms", "manifest", "setup")}, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
