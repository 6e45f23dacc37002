"""How long a checkpoint save holds the training loop: blocking saves (checkpoint.format=file, one
``.pt`` written by rank 0; checkpoint.format=dcp, a DCP folder every rank writes) against the
asynchronous DCP save (checkpoint.async_save=true: state copied to host memory, written on a
thread), on 1 rank (dist.strategy=single) and 2 ranks (ddp, torchrun, gloo), on the GPT of
``ranks.py`` (fp32 AdamW, 23.1M parameters), CPU.

Each run trains ``--steps`` steps with checkpoint.every=K and is timed by ``on_step`` timestamps;
the trainer saves right after ``on_step(K)``, so a save lands in the time of step K+1. Per save:
  hold           = that step's time - the median time of the run's steps that do not save
  hold_vs_none   = that step's time - the median step time of the run without checkpoints
                   (variant ``none``, checkpoint.every=0) in the same round
and per run, ``extra_per_save`` = (the run's timed steps - as many steps of ``none``) / saves: what the
saves cost the run in all, including steps slowed down while a background save writes (two cores
here: the writer competes with training). The first save of every run is reported apart
(``first_save_hold_s``: it also pays imports, DCP's among them); medians and ranges are over the later
saves of every round. The checkpoint's size on disk is that of the run's last complete checkpoint.

One process per world size (plain for 1 rank, torchrun for 2) runs every round: the variants
alternate their order (forward, then backward). A run is ended after its last timed step, before its
final evaluation and checkpoint (a background save still in flight is waited for). Two rounds take
about 4.5 minutes on a 2-core VM (1 rank 1.5, 2 ranks 3). No thresholds.

    .venv/bin/python benchmarks/checkpoint_save.py --rounds 2 --out benchmarks/results/checkpoint_save_cpu.json
    .venv/bin/python benchmarks/checkpoint_save.py --rounds 1 --every 2 --steps 6 --worlds 1 \
        --set model.n_layer=2 --set model.n_embd=128 --out /tmp/tiny.json                 # a quick check
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ranks

VARIANTS = {
    "none": ["checkpoint.every=0"],
    "file": ["checkpoint.format=file", "checkpoint.async_save=false"],
    "dcp": ["checkpoint.format=dcp", "checkpoint.async_save=false"],
    "dcp_async": ["checkpoint.format=dcp", "checkpoint.async_save=true"],
}
STRATEGY = {1: "single", 2: "ddp"}  # world size -> dist.strategy (a world above 2 also runs ddp)


class Measured(Exception):
    """Raised by on_step after the last timed step: the run's final evaluation and checkpoint are
    not this benchmark's business (every rank raises it at the same step)."""


# -------------------------------------------------------- the worker (every rank)
def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_run(variant: str, args, folder: Path, world: int, index: int) -> dict:
    from hpc_dl import config
    from hpc_dl.checkpoint import CheckpointDir
    from hpc_dl.training import run

    every = [] if variant == "none" else [f"checkpoint.every={args.every}"]
    strategy = args.strategy or STRATEGY.get(world, "ddp")
    cfg = config.load(ranks.CONFIG, [*ranks.GPT, f"dist.strategy={strategy}", f"train.steps={args.steps + 1}",
                                     "checkpoint.keep_last=2", *VARIANTS[variant], *every,
                                     *args.overrides])  # fmt: skip
    # hpc_dl's rendezvous keys live under the torchrun attempt number: a fresh prefix per run lets one
    # process form the process group again (keys of the run before would be read as this run's)
    os.environ["TORCHELASTIC_RESTART_COUNT"] = f"bench{index}"
    stamps: dict[int, float] = {}

    def on_step(step: int) -> None:
        stamps[step] = time.perf_counter()
        if step == args.steps:
            raise Measured

    out = folder / f"{index:03d}-{variant}"
    try:
        run.train(cfg, run_dir=str(out), on_step=on_step)
    except Measured:
        pass
    size, kept = None, 0
    if ranks.env_rank() == 0:  # every rank has finished its part of the last save by now
        found = CheckpointDir(out / "checkpoints", 2).files() if (out / "checkpoints").is_dir() else []
        size, kept = (size_on_disk(found[0]) if found else None), len(found)  # newest first
        shutil.rmtree(out, ignore_errors=True)
    return {"variant": variant, "stamps": stamps, "checkpoint_bytes": size, "checkpoints_kept": kept}


def worker(args) -> int:
    os.environ["WANDB_MODE"] = "disabled"
    from hpc_dl.training import run

    run._flops_per_sample = lambda cfg, spec: None  # MFU is not measured here: skip counting (1.5 s)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = ranks.env_rank()
    folder = Path(args.dir) / "checkpoint_save_runs"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    names = list(VARIANTS)
    runs, index = [], 0
    for r in range(args.rounds):
        for variant in names if r % 2 == 0 else names[::-1]:
            result = one_run(variant, args, folder, world, index)
            result["round"] = r
            runs.append(result)
            index += 1
            if rank == 0:
                print(f"bench: {world} rank(s), round {r + 1}/{args.rounds}, {variant}: "
                      f"{summarise_run(result, args)['hold_s']}", file=sys.stderr, flush=True)  # fmt: skip
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    ranks.write_rank(args.results, rank, {"rank": rank, "world_size": world, "runs": runs})
    return 0


# ------------------------------------------------------------------- analysis
def saves(args) -> list[int]:
    return [s for s in range(args.every, args.steps, args.every)]  # the last step never saves mid-run


def summarise_run(run: dict, args) -> dict:
    """Per-step times of one run: its saves' holds and the median of its other steps."""
    times = ranks.intervals(run["stamps"])
    timed = {s: t for s, t in times.items() if s > args.warmup}
    # keyed by the step after which it saved (a save lands in the next step's time)
    saving = {s - 1: t for s, t in timed.items() if s - 1 in saves(args)} if run["variant"] != "none" else {}
    plain = [t for s, t in timed.items() if s - 1 not in saving]
    median = statistics.median(plain) if plain else None
    return {
        "step_s": median,
        "save_step_s": {s: round(t, 4) for s, t in saving.items()},  # keyed by the step after which it saved
        "hold_s": {s: round(t - median, 4) for s, t in saving.items()} if median is not None else {},
        "timed_total_s": sum(timed.values()),
        "timed_steps": len(timed),
    }


def summarise(per_rank: list[dict], args) -> dict:
    """For one world size: per variant, holds and costs over the rounds (rank 0; every rank's holds too)."""
    out: dict = {}
    first = saves(args)[0] if saves(args) else None
    for rank_data in per_rank:
        rank = rank_data["rank"]
        rows = [(run, summarise_run(run, args)) for run in rank_data["runs"]]
        none = {run["round"]: s for run, s in rows if run["variant"] == "none"}
        for variant in VARIANTS:
            mine = [(run, s) for run, s in rows if run["variant"] == variant]
            holds, first_holds, vs_none, extra, step_s = [], [], [], [], []
            for run, s in mine:
                base = none.get(run["round"])
                step_s.append(s["step_s"])
                for step, hold in s["hold_s"].items():
                    (first_holds if step == first else holds).append(hold)
                    if base and base["step_s"] is not None and step != first:
                        vs_none.append(s["save_step_s"][step] - base["step_s"])
                n = len(s["hold_s"])
                if n and base and base["step_s"] is not None:
                    extra.append((s["timed_total_s"] - s["timed_steps"] * base["step_s"]) / n)
            sizes = [run["checkpoint_bytes"] for run, _ in mine if run["checkpoint_bytes"]]
            entry = {
                "runs": len(mine),
                "step_s": ranks.spread(step_s),  # the run's steps that do not save
                "hold_s": ranks.spread(holds),
                "hold_vs_none_s": ranks.spread(vs_none),
                "extra_per_save_s": ranks.spread(extra),
                "first_save_hold_s": ranks.spread(first_holds),
                "checkpoint_bytes": ranks.spread(sizes, 0),
                "holds_s": [round(h, 4) for h in holds],
            }
            if rank == 0:
                out[variant] = entry
            else:
                out[variant].setdefault("other_ranks", {})[str(rank)] = {
                    k: entry[k] for k in ("hold_s", "hold_vs_none_s", "extra_per_save_s")}  # fmt: skip
    return out


def table(result: dict) -> str:
    lines = [
        "| ranks | variant | step s | hold s, median (range) | vs none s | extra per save s | 1st save s | size MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(s):
        return f"{s['median']:.3f} ({s['min']:.3f} to {s['max']:.3f})" if s else "-"

    for world, entry in result["worlds"].items():
        if "failure" in entry:
            lines.append(f"| {world} | failed: {entry['failure'].get('exit')} | | | | | | |")
            continue
        for variant, v in entry["variants"].items():
            size = f"{v['checkpoint_bytes']['median'] / 2**20:.0f}" if v["checkpoint_bytes"] else "-"
            step = f"{v['step_s']['median']:.3f}" if v["step_s"] else "-"
            lines.append(f"| {world} | {variant} | {step} | {fmt(v['hold_s'])} | {fmt(v['hold_vs_none_s'])} | "
                         f"{fmt(v['extra_per_save_s'])} | {fmt(v['first_save_hold_s'])} | {size} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=int, default=3, help="checkpoint.every (K)")
    parser.add_argument("--steps", type=int, default=10, help="timed run length; saves at K, 2K, ... below it")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the timing")
    parser.add_argument("--worlds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--strategy", help="dist.strategy for every world size (default: single on 1 rank, else ddp)")
    parser.add_argument("--dir", default=None, help="where runs write their checkpoints (default: a temporary folder)")
    parser.add_argument(
        "--timeout", type=float, help="seconds before a world size's process is killed (120 + 150/round)"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, after the benchmark's own (repeatable)")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.timeout = args.timeout or 120 + 150 * args.rounds
    if len(saves(args)) < 2 or args.warmup >= args.every:
        parser.error("--steps must allow two saves (K, 2K < steps) and --warmup must be below --every")
    common = ["--rounds", str(args.rounds), "--every", str(args.every), "--steps", str(args.steps),
              "--warmup", str(args.warmup), *(["--strategy", args.strategy] if args.strategy else []),
              *[a for o in args.overrides for a in ("--set", o)]]  # fmt: skip
    worlds, start = {}, time.perf_counter()
    for n in args.worlds:
        with tempfile.TemporaryDirectory(prefix="ckpt-bench-", dir=args.dir) as tmp:
            data, how = ranks.launch(Path(__file__).resolve(), n, [*common, "--dir", tmp], args.timeout)
        said = f"\n{how['error_tail']}" if "error_tail" in how else ""
        print(f"{n} rank(s): exit {how['exit']}, {how['wall_s']:.1f} s{said}", file=sys.stderr, flush=True)
        if how["exit"] != 0 or len(data) != n:
            worlds[str(n)] = {"failure": how}
            continue
        runs = [{"round": r["round"], "variant": r["variant"], "checkpoint_bytes": r["checkpoint_bytes"],
                 "step_times_s": {s: round(t, 4) for s, t in ranks.intervals(r["stamps"]).items()}}
                for r in data[0]["runs"]]  # fmt: skip
        worlds[str(n)] = {"strategy": args.strategy or STRATEGY.get(n, "ddp"), "wall_s": how["wall_s"],
                          "variants": summarise(data, args), "runs_rank0": runs}  # fmt: skip
    where = Path(args.dir or tempfile.gettempdir()).resolve()
    result = {
        "benchmark": "checkpoint_save",
        "what": "seconds a checkpoint save holds the training loop (save step - median other step), blocking "
        "file / blocking DCP / asynchronous DCP, per world size; checkpoint size",
        "setup": {
            "config": ranks.CONFIG,
            "overrides": ranks.GPT + args.overrides,
            "variants": VARIANTS,
            "checkpoint_every": args.every,
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "saves_per_run": saves(args),
            "rounds": args.rounds,
            "threads_per_rank": 1,
            "checkpoint_dir_filesystem": _filesystem(where),
            "wall_s": round(time.perf_counter() - start, 1),
            "launcher": "1 rank: a plain process, 2: torchrun --standalone; all rounds in that process",
        },
        "notes": [
            "hold: per save, the time of the step it lands in minus the median of the run's other timed steps; "
            "medians and ranges over every save but each run's first (first_save_hold_s).",
            "extra_per_save: (sum of the run's timed steps - as many median steps of the 'none' run of the "
            "same round) / saves: includes steps slowed by a background write.",
            "rank 0's figures; other_ranks holds the others' (ranks wait for each other at the next collective).",
        ],
        "worlds": worlds,
        "manifest": ranks.machine(),
    }
    return ranks.report(result, table(result), args.out)


def _filesystem(path: Path) -> str | None:
    """The type of the file system that holds ``path`` (from /proc/mounts), e.g. ext4 or tmpfs."""
    try:
        mounts = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    holding = [m for m in mounts if len(m) > 2 and (str(path) + "/").startswith(m[1].rstrip("/") + "/")]
    best = max(holding, key=lambda m: len(m[1]), default=None)
    return f"{best[2]} ({best[0]} on {best[1]})" if best else None


if __name__ == "__main__":
    sys.exit(main())
