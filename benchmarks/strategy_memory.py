"""Memory per rank and step time of each dist.strategy on the GPT: single (1 rank), DDP, DeepSpeed
ZeRO-1/2/3 and FSDP2, each on 1 rank (a world of one) and on 2 ranks (torchrun, gloo), on CPU,
fp32 AdamW, against what the textbook formulas say. The GPT is ``ranks.py``'s (23.1M parameters).

Per rank it reports
  (a) the bytes of model state this rank holds, read from the live objects in the last step, after
      backward and at the optimizer step (gradients exist then; Adam's state since step 1), the
      fullest view kept: parameters (an FSDP DTensor's local shard, a ZeRO-3 parameter's
      ``ds_tensor`` partition), gradients, optimizer state, and DeepSpeed's fp32 master partition
      (which it keeps even in fp32, where it is a copy of the parameters). For DeepSpeed these are
      the tensors reachable from its ZeRO optimizer object (attribute names tell gradient buffers
      from the rest), each storage counted once; reduce-bucket buffers DeepSpeed allocates at full
      ``reduce_bucket_size`` but fills only in part are listed apart (``allocated_buffers``, not in
      ``model_state``): their untouched pages are not resident. ``python_tensors_bytes`` is every
      tensor storage the garbage collector sees after the last step (model state, data, the rest);
  (b) the process's peak resident memory (``ru_maxrss``) at the end of the last step (the run ends
      there: no final evaluation or checkpoint), and the same for baseline processes that import
      torch and hpc_dl's trainer (and DeepSpeed) and build nothing: ``over_baseline`` is what the
      run itself added;
  (c) the formula, P parameters, N ranks, fp32 AdamW: single/DDP 16P; ZeRO-1 4P + 4P + 8P/N;
      ZeRO-2 4P + 12P/N; ZeRO-3 and FSDP2 16P/N, plus one gathered block (4 bytes x the largest
      block's parameters) while it runs;
and the step time: the median (and range) of the per-step times (``on_step`` timestamps) after the
warm-up steps and before the last step (which takes the measurements). Buffers that live only inside
backward (ZeRO-2/3's bucketed reductions, FSDP's gathered blocks, activations) show in the peak RSS only.

Each configuration runs as a fresh process (peak RSS only grows): 2 baselines + 11 configurations,
about 3.5 minutes a round on a 2-core VM. The model state is the same in every round and the peak RSS
nearly so; more rounds (order alternating: forward, then backward, baselines in each) add samples of
the step time. No thresholds: this records what each strategy holds and costs here.

    .venv/bin/python benchmarks/strategy_memory.py --out benchmarks/results/strategy_memory_cpu.json
    .venv/bin/python benchmarks/strategy_memory.py --steps 4 --warmup 1 --only ddp:2,fsdp:2 \
        --set model.n_layer=2 --set model.n_embd=128 --out /tmp/tiny.json          # a quick check
"""

import argparse
import gc
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import ranks

STRATEGIES = {
    "single": ["dist.strategy=single"],
    "ddp": ["dist.strategy=ddp"],
    "zero1": ["dist.strategy=deepspeed", "dist.zero_stage=1"],
    "zero2": ["dist.strategy=deepspeed", "dist.zero_stage=2"],
    "zero3": ["dist.strategy=deepspeed", "dist.zero_stage=3"],
    "fsdp": ["dist.strategy=fsdp"],
}
BASELINES = {"baseline": "import torch and hpc_dl's trainer", "baseline_deepspeed": "and DeepSpeed"}
CATEGORIES = ("params", "grads", "optimizer_state", "master_weights")  # the model state, summed in (a)


def configurations(worlds: list[int]) -> list[str]:
    """'name:ranks' for every measured configuration; single runs on 1 rank only."""
    return [f"{name}:{n}" for n in worlds for name in STRATEGIES if not (name == "single" and n > 1)]


# ------------------------------------------------------------------ formulas
def formula(name: str, p: int, n: int, block: int) -> dict:
    """Bytes per rank the textbook expects for fp32 AdamW (4 param + 4 grad + 8 Adam per parameter)."""
    state = {
        "single": 16 * p,
        "ddp": 16 * p,
        "zero1": 4 * p + 4 * p + 8 * p / n,
        "zero2": 4 * p + (4 * p + 8 * p) / n,
        "zero3": 16 * p / n,
        "fsdp": 16 * p / n,
    }[name]
    text = {"single": "16P", "ddp": "16P", "zero1": "4P + 4P + 8P/N", "zero2": "4P + (4P + 8P)/N",
            "zero3": "16P/N + one gathered block", "fsdp": "16P/N + one gathered block"}[name]  # fmt: skip
    gathered = 4 * block if name in ("zero3", "fsdp") else 0
    return {"formula": text, "state_bytes": int(state), "gathered_block_bytes": gathered,
            "total_bytes": int(state + gathered)}  # fmt: skip


# -------------------------------------------------------- the worker (one rank)
def _local(t):
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _storage(t) -> tuple[int, int] | None:
    """(address, bytes) of the memory behind a tensor; None for one without (meta, empty)."""
    try:
        t = _local(t)
        if t.device.type == "meta":  # DeepSpeed keeps meta-device shapes of its groups: no memory
            return None
        s = t.untyped_storage()
        return (s.data_ptr(), s.nbytes()) if s.nbytes() else None
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class Ledger:
    """Tensor storages by category, each counted once (the first category that claims it wins:
    callers claim in priority order)."""

    def __init__(self):
        self.owner: dict[int, tuple[str, int]] = {}
        self.examples: dict[str, list[str]] = {}

    def claim(self, category: str, tensor, where: str = "") -> None:
        found = _storage(tensor)
        if found and found[0] not in self.owner:
            self.owner[found[0]] = (category, found[1])
            names = self.examples.setdefault(category, [])
            if where and len(names) < 6 and where not in names:
                names.append(where)

    def totals(self) -> dict[str, int]:
        out = {c: 0 for c in (*CATEGORIES, "allocated_buffers")}
        for category, size in self.owner.values():
            out[category] = out.get(category, 0) + size
        return out


def _reachable(root, path: str, depth: int, seen: set):
    """(path, tensor) for the tensors held by ``root`` (DeepSpeed's own objects, containers), with
    their ``.grad`` and a ZeRO-3 parameter's ``ds_tensor``; process groups and the like are skipped."""
    import torch

    if id(root) in seen or depth < 0:
        return
    seen.add(id(root))
    if isinstance(root, torch.Tensor):
        yield path, root
        for extra in ("grad", "ds_tensor"):
            t = getattr(root, extra, None)
            if isinstance(t, torch.Tensor):
                yield f"{path}.{extra}", t
        return
    if isinstance(root, dict):
        items = [(f"{path}[{'tensor' if isinstance(k, torch.Tensor) else repr(k)}]", v) for k, v in root.items()]
    elif isinstance(root, list | tuple | set):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(root)]
    elif type(root).__module__.startswith(("deepspeed", "torch.optim")) and hasattr(root, "__dict__"):
        items = [(f"{path}.{k}", v) for k, v in vars(root).items()]
    else:
        return
    for where, value in items:
        yield from _reachable(value, where, depth - 1, seen)


def _deepspeed_category(path: str) -> str:
    low = path.split(".", 1)[-1].lower()
    if "ipg" in low or "bucket" in low:
        return "allocated_buffers"
    if "grad" in low:
        return "grads"
    if "fp32" in low:
        return "master_weights"
    if "bit16" in low or "fp16" in low or "ds_tensor" in low:
        return "params"
    return "allocated_buffers"


def model_state(strategy) -> dict:
    """Bytes of model state this rank holds now (see the module's docstring, (a))."""
    ledger = Ledger()
    module = strategy.module
    for name, p in module.named_parameters():
        ds = getattr(p, "ds_tensor", None)
        ledger.claim("params", ds if ds is not None else p, name)
    inner = strategy.optimizer
    deepspeed = strategy.name == "deepspeed"
    if deepspeed:
        inner = getattr(strategy.optimizer, "optimizer", strategy.optimizer)  # the torch optimizer ZeRO drives
    for group in inner.param_groups:  # DeepSpeed: its fp32 partitions; others: the model's own parameters
        for p in group["params"]:
            ledger.claim("master_weights" if deepspeed else "params", p, "optimizer.param_groups")
    for state in inner.state.values():
        for key, value in state.items():
            if hasattr(value, "untyped_storage") or hasattr(value, "to_local"):
                ledger.claim("optimizer_state", value, f"optimizer.state[{key}]")
    for name, p in module.named_parameters():
        if p.grad is not None:
            ledger.claim("grads", p.grad, f"{name}.grad")
    for group in inner.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                ledger.claim("grads", p.grad, "optimizer.param_groups.grad")
    if deepspeed:
        for path, t in _reachable(strategy.optimizer, "zero", 6, set()):
            ledger.claim(_deepspeed_category(path), t, path)
    totals = ledger.totals()
    totals["model_state"] = sum(totals[c] for c in CATEGORIES)
    return {"bytes": totals, "examples": ledger.examples}


def python_tensor_bytes() -> int:
    """Every tensor storage the garbage collector sees, once each."""
    import torch

    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module attributes warns
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        tensors = [obj for obj in objects if _is_tensor(obj, torch)]
    for obj in tensors:
        found = _storage(obj)
        if found and found[0] not in seen:
            seen.add(found[0])
            total += found[1]
    return total


def _is_tensor(obj, torch) -> bool:
    try:
        return isinstance(obj, torch.Tensor)
    except ReferenceError:  # a dead weak proxy
        return False


def parameter_counts(module) -> tuple[int, int]:
    """(P, the largest block's parameters), counted whole whatever the sharding."""
    from hpc_dl.models.checkpointing import blocks

    def count(params) -> int:
        seen, n = set(), 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                n += getattr(p, "ds_numel", None) or p.numel()  # DTensor.numel() is the global size
        return n

    units = blocks(module)
    return count(module.parameters()), max((count(b.parameters()) for b in units), default=0)


def worker(args) -> int:
    os.environ["WANDB_MODE"] = "disabled"
    rank = ranks.env_rank()
    if args.baseline:
        import torch  # noqa: F401

        import hpc_dl.training.run  # noqa: F401 - what a training process imports before it builds anything

        if args.baseline == "baseline_deepspeed":
            import deepspeed  # noqa: F401
        ranks.write_rank(args.results, rank, {"peak_rss_bytes": ranks.peak_rss_bytes()})
        return 0

    import torch.distributed as dist

    from hpc_dl import config
    from hpc_dl.training import run

    run._flops_per_sample = lambda cfg, spec: None  # MFU is not measured here: skip counting (1.5 s)
    cfg = config.load(ranks.CONFIG, [*ranks.GPT, *STRATEGIES[args.strategy], f"train.steps={args.steps}",
                                     *args.overrides])  # fmt: skip
    kept = ranks.keep_strategy()
    stamps: dict[int, float] = {}
    out: dict = {"rank": rank}

    def snapshot(*_, **__) -> None:
        """Inside the last step, after backward (gradients present; Adam's state exists since step 1)."""
        if len(stamps) == args.steps - 1:
            seen = model_state(kept["strategy"])
            best = out.get("state")
            if best is None or seen["bytes"]["model_state"] > best["bytes"]["model_state"]:
                out["state"] = seen  # DeepSpeed: once per parameter group and before its step; the fullest view

    def on_step(step: int) -> None:
        stamps[step] = time.perf_counter()
        s = kept["strategy"]
        if step == 1:
            opt = s.optimizer
            inner = getattr(opt, "optimizer", opt) if s.name == "deepspeed" else opt
            inner.register_step_pre_hook(snapshot)
            if s.name == "deepspeed":  # backward and step both happen in strategy.backward: look in between
                engine_step = s.engine.step

                def step_after_backward(*a, **k):
                    snapshot()
                    return engine_step(*a, **k)

                s.engine.step = step_after_backward
            out["parameters"], out["largest_block_parameters"] = parameter_counts(s.module)
        if step == args.steps:
            out["peak_rss_bytes"] = ranks.peak_rss_bytes()
            out["after_step"] = model_state(s)  # gradients are gone by now (zero_grad(set_to_none))
            out["python_tensors_bytes"] = python_tensor_bytes()
            out["stamps"] = stamps
            out["strategy"] = s.name
            out["world_size"] = s.world_size
            ranks.write_rank(args.results, rank, out)
            # Measured: skip the final evaluation and checkpoint (seconds per run, and memory this
            # benchmark does not ask about). Every rank is here after the same collectives.
            if dist.is_initialized():
                dist.barrier()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    run.train(cfg, run_dir=str(Path(args.results) / "run"), on_step=on_step)  # rank 0 names it for every rank
    return 1  # not reached: the last step ends the process


# ------------------------------------------------------------------ the driver
def measure(name: str, nproc: int, args) -> tuple[list[dict], dict]:
    script = Path(__file__).resolve()
    extra = ["--steps", str(args.steps)] + [a for o in args.overrides for a in ("--set", o)]
    if name in BASELINES:
        return ranks.launch(script, 1, ["--baseline", name], args.timeout)
    return ranks.launch(script, nproc, ["--strategy", name, *extra], args.timeout)


def rank_summary(data: dict, args) -> dict:
    """One rank of one run: its median step time after the warm-up, and what it measured."""
    times = ranks.intervals(data["stamps"])
    timed = [t for s, t in times.items() if args.warmup < s < args.steps]  # the last step measures: not timed
    state = data.get("state") or data["after_step"]
    return {
        "step_s": statistics.median(timed) if timed else None,
        "step_times_s": timed,
        "peak_rss_bytes": data["peak_rss_bytes"],
        "state": state["bytes"],
        "state_examples": state["examples"],
        "after_step": data["after_step"]["bytes"],
        "python_tensors_bytes": data["python_tensors_bytes"],
        "parameters": data["parameters"],
        "largest_block_parameters": data["largest_block_parameters"],
    }


def summarise(rounds: list[dict], args) -> dict:
    """Per configuration and rank: medians and ranges over the rounds; against the formula and the baselines."""
    base = {b: [r[b]["ranks"][0]["peak_rss_bytes"] for r in rounds if r.get(b, {}).get("ranks")] for b in BASELINES}
    base_median = {b: statistics.median(v) if v else None for b, v in base.items()}
    out = {"baselines": {b: {"peak_rss_bytes": ranks.spread(v, 0), "what": BASELINES[b]} for b, v in base.items()}}
    configs = {}
    for key in configurations(args.worlds) if not args.only else args.only:
        name, n = key.split(":")[0], int(key.split(":")[1])
        runs = [r.get(key) for r in rounds]
        ok = [r for r in runs if r and len(r["ranks"]) == n and r["how"]["exit"] == 0]
        entry: dict = {"strategy": name, "ranks": n, "runs_ok": len(ok), "runs": len(runs)}
        failed = [r["how"] for r in runs if r and r not in ok]
        if failed:
            entry["failures"] = failed
        if not ok:
            configs[key] = entry
            continue
        per = [[rank_summary(d, args) for d in r["ranks"]] for r in ok]
        first = per[0][0]
        f = formula(name, first["parameters"], n, first["largest_block_parameters"])
        baseline = base_median["baseline_deepspeed" if name.startswith("zero") else "baseline"]
        entry["parameters"] = first["parameters"]
        entry["expected"] = f
        entry["per_rank"] = []
        for r in range(n):
            rows = [p[r] for p in per]
            measured = rows[0]["state"]  # the live objects do not change from round to round
            state_total = measured["model_state"]
            peaks = [x["peak_rss_bytes"] for x in rows]
            entry["per_rank"].append({
                "rank": r,
                "state_bytes": measured,  # (a), at the optimizer step of the last step
                "state_bytes_after_step": rows[0]["after_step"],
                "state_vs_formula": round(state_total / f["state_bytes"], 3),
                "state_examples": rows[0]["state_examples"],
                "python_tensors_bytes": rows[0]["python_tensors_bytes"],
                "peak_rss_bytes": ranks.spread(peaks, 0),  # (b)
                "peak_rss_over_baseline_bytes": ranks.spread([p - baseline for p in peaks], 0) if baseline else None,
                "step_s": ranks.spread([x["step_s"] for x in rows]),  # over the rounds, of each run's median
                "step_s_all_steps": ranks.spread([t for x in rows for t in x["step_times_s"]]),  # every timed step
                "step_times_s": [[round(t, 4) for t in x["step_times_s"]] for x in rows],
            })  # fmt: skip
        configs[key] = entry
    out["configurations"] = configs
    return out


def table(summary: dict) -> str:
    """The summary as a Markdown table (rank 0's figures; MiB)."""
    mib = 2**20
    lines = ["| strategy | ranks | model state, measured MiB | formula MiB (+ gathered block) | measured / formula "
             "| peak RSS MiB | over baseline MiB | step s, median (range over timed steps) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for entry in summary["configurations"].values():
        if not entry.get("per_rank"):
            lines.append(f"| {entry['strategy']} | {entry['ranks']} | failed | | | | | |")
            continue
        r0, f = entry["per_rank"][0], entry["expected"]
        over, st = r0["peak_rss_over_baseline_bytes"], r0["step_s_all_steps"]
        lines.append(
            f"| {entry['strategy']} | {entry['ranks']} | {r0['state_bytes']['model_state'] / mib:.0f} | "
            f"{f['state_bytes'] / mib:.0f} (+{f['gathered_block_bytes'] / mib:.0f}) | {r0['state_vs_formula']} | "
            f"{r0['peak_rss_bytes']['median'] / mib:.0f} | {over['median'] / mib:.0f} | "
            f"{st['median']:.3f} ({st['min']:.3f}-{st['max']:.3f}) |"
            if over and st
            else f"| {entry['strategy']} | {entry['ranks']} | {r0['state_bytes']['model_state'] / mib:.0f} | | | | | |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", choices=list(STRATEGIES), help=argparse.SUPPRESS)
    parser.add_argument("--baseline", choices=list(BASELINES), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per run (the last one measures)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the step time")
    parser.add_argument("--worlds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="e.g. ddp:2,fsdp:2")
    parser.add_argument("--timeout", type=float, default=240, help="seconds before one run is killed")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, after the benchmark's own (repeatable)")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.steps < args.warmup + 3:
        parser.error("--steps must leave at least two timed steps between --warmup and the last (measuring) step")
    keys = list(BASELINES) + (args.only or configurations(args.worlds))
    rounds = []
    start = time.perf_counter()
    for r in range(args.rounds):
        got = {}
        for key in keys if r % 2 == 0 else keys[::-1]:
            name, n = (key, 1) if key in BASELINES else (key.split(":")[0], int(key.split(":")[1]))
            data, how = measure(name, n, args)
            got[key] = {"ranks": data, "how": how}
            state = data[0].get("state", {}).get("bytes", {}).get("model_state") if data else None
            print(f"round {r + 1}/{args.rounds} {key}: exit {how['exit']}, {how['wall_s']:.1f} s"
                  + (f", model state {state / 2**20:.0f} MiB" if state else "")
                  + (f"\n{how['error_tail']}" if "error_tail" in how else ""), file=sys.stderr, flush=True)  # fmt: skip
        rounds.append(got)
    result = {
        "benchmark": "strategy_memory",
        "what": "per rank: model-state bytes held (live objects), peak RSS vs a baseline process, formula; "
        "median step time after warm-up; per dist.strategy and world size",
        "setup": {
            "config": ranks.CONFIG,
            "overrides": ranks.GPT + args.overrides,
            "strategies": STRATEGIES,
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "rounds": args.rounds,
            "threads_per_rank": 1,
            "launcher": "1 rank: one plain process; 2 ranks: torchrun --standalone",
            "wall_s": round(time.perf_counter() - start, 1),
        },
        "notes": [
            "state_bytes: at the optimizer's step of the last step (DeepSpeed: the torch optimizer it drives "
            "steps once per parameter group; the fullest view is kept). Storages counted once.",
            "DeepSpeed: the tensors reachable from its ZeRO optimizer, classed by attribute name; master_weights "
            "is its fp32 partition, a copy of the fp32 parameters that the fp32 formulas leave out; "
            "allocated_buffers (reduce buckets, allocated at reduce_bucket_size) is outside model_state and "
            "counts allocated bytes, of which only the written pages are resident.",
            "peak_rss_bytes: ru_maxrss at the end of the last step; the run then ends (no final evaluation or "
            "checkpoint). over_baseline subtracts the median peak RSS of a process that imports torch and "
            "hpc_dl's trainer (and DeepSpeed, for zero*) and builds nothing. FLOP counting (for MFU) is skipped.",
            "state_bytes is taken after backward and at the optimizer step (the fullest kept); buffers that "
            "live only inside backward (bucketed reduction of ZeRO-2/3, FSDP's gathered blocks) show in peak "
            "RSS only. state_bytes_after_step: after zero_grad(set_to_none), as the loop holds it between steps.",
        ],
        **summarise(rounds, args),
        "manifest": ranks.machine(),
    }
    return ranks.report(result, table(result), args.out)


if __name__ == "__main__":
    sys.exit(main())
