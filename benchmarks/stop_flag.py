"""What the per-step stop agreement costs, and whether it grows with the rank count.

Every step the ranks agree whether any of them got a stop signal (hpc_dl/training/stop.py), so that all
stop after the same step. Before: a blocking all-reduce of the flag on a gloo group after each step
(a ring: its latency grows with the ranks). After: ``Strategy.any_rank``, hpc_dl's code, which issues
the all-reduce after a step and reads it after the next (no step waits for it). Measured on N local
gloo ranks (torchrun), N = 2, 4, 8, 16, with a stand-in step: 2 ms of host idle time (what the host
does while a GPU computes) and a 1024-float all-reduce (the gradients' coupling of the ranks).

    overhead per step = median step time with the agreement - median step time without it

rank 0's steps, one process per N running every round, the variants alternating their order per
round (none, blocking, lagged; then backward); medians and ranges over rounds. On a 2-core VM 16
ranks oversubscribe the cores 8 times: absolute times there are the machine's, the comparison in the
same round is the point. About 3 minutes. No thresholds.

    .venv/bin/python benchmarks/stop_flag.py --out benchmarks/results/stop_flag_cpu.json
"""

import argparse
import datetime
import os
import statistics
import sys
import time
import types
from pathlib import Path

import ranks

VARIANTS = ("none", "blocking", "lagged")


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from hpc_dl.distributed.strategy import Strategy

    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", timeout=timeout)
    rank, n = dist.get_rank(), dist.get_world_size()
    flags = dist.new_group(backend="gloo", timeout=timeout)
    grads = torch.ones(1024)

    def blocking(flag: bool) -> bool:  # what Strategy.any_rank did before
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=flags)
        return bool(t.item())

    def run(variant: str) -> list[float]:
        lagged = Strategy.__new__(Strategy)  # hpc_dl's any_rank, without building a whole strategy
        lagged.dist, lagged.world, lagged._flag = types.SimpleNamespace(timeout_s=120), types.SimpleNamespace(
            world_size=n), None  # fmt: skip
        agree = {"none": None, "blocking": blocking, "lagged": lagged.any_rank}[variant]
        dist.barrier()
        times, last = [], time.perf_counter()
        for _ in range(args.steps):
            time.sleep(args.idle_ms / 1e3)
            dist.all_reduce(grads)
            if agree is not None and agree(False):
                raise AssertionError("no rank was signalled")
            now = time.perf_counter()
            times.append(now - last)
            last = now
        if lagged._flag is not None:
            lagged._flag[1].wait()
        return times[args.steps // 10 :]  # the first tenth warms up

    out = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            out[variant].append(statistics.median(run(variant)))
    ranks.write_rank(args.results, rank, {"median_step_s": out})
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    p.add_argument("--ranks", default="2,4,8,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--idle-ms", type=float, default=2.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    passed = ["--rounds", str(args.rounds), "--steps", str(args.steps), "--idle-ms", str(args.idle_ms)]
    rows, result = [], {"machine": ranks.machine(), "date": datetime.date.today().isoformat(),
                        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "worlds": {}}  # fmt: skip
    for n in map(int, args.ranks.split(",")):
        got, how = ranks.launch(Path(__file__), n, passed, timeout_s=900)
        if not got:
            result["worlds"][n] = {"failed": how}
            print(f"{n} ranks failed: {how}", file=sys.stderr)
            continue
        steps = got[0]["median_step_s"]
        none = steps["none"]
        entry = {"step_s_none": ranks.spread(none, 6), "wall_s": how["wall_s"]}
        for v in ("blocking", "lagged"):
            entry[f"overhead_ms_{v}"] = ranks.spread([(a - b) * 1e3 for a, b in zip(steps[v], none)], 3)
        result["worlds"][n] = entry
        rows.append(
            f"| {n} | {entry['step_s_none']['median'] * 1e3:.2f} | {_fmt(entry['overhead_ms_blocking'])} | "
            f"{_fmt(entry['overhead_ms_lagged'])} |"
        )
        print(rows[-1], file=sys.stderr)
    table = "\n".join([
        "| ranks | step without agreement (ms) | blocking all-reduce: overhead per step (ms) | "
        "hpc_dl (lagged): overhead per step (ms) |", "|---|---|---|---|", *rows,
    ])  # fmt: skip
    return ranks.report(result, table, args.out)


def _fmt(s: dict) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f} to {s['max']:.3f})"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
