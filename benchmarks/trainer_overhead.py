"""What hpc_dl's training loop costs: the same model, data and batch trained by hpc_dl's
trainer (``train()``, its defaults: a metrics record every 10 steps with the step-time
breakdown, the utilisation sampler, gradient-norm clipping bookkeeping) and by a minimal
hand-written PyTorch loop, alternating, in one process.

Both use the same model class and initial weights (same seed), the same in-memory data
set (indexed on the device, as hpc_dl does with data.on_device=true), the same AdamW
optimizer with hpc_dl's parameter groups and the same LR schedule, so the difference is
the loop itself. W&B is off (its cost is the telemetry benchmark's business); evaluation
and checkpoints are off. Each run is timed from the end of its warm-up steps to its last
step; one untimed run first absorbs the process's warm-up. Pairs alternate their order;
the result is the median of the per-pair ratios (target: hpc_dl / hand <= 1.02).

  python benchmarks/trainer_overhead.py --pairs 6 --out benchmarks/results/trainer_overhead_cpu.json
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from alternate import alternate, arguments, report

from hpc_dl import config, data, models
from hpc_dl.train import rng
from hpc_dl.train.optim import build_optimizer, build_scheduler
from hpc_dl.train.run import train

BASE = ["data.name=synthetic_images", "data.on_device=true", "model.name=resnet20", "train.eval_every=0",
        "checkpoint.every=0", "log.plots=false", "log.progress=off", "log.wandb=false",
        "optim.warmup_steps=0"]  # fmt: skip


def hpc_dl_run(cfg, workdir: Path, warmup: int) -> float:
    stamps = {}
    train(cfg, run_dir=str(workdir), on_step=lambda step: stamps.setdefault(step, time.perf_counter()))
    steps = cfg.train.steps
    return (stamps[steps] - stamps[warmup]) / (steps - warmup)


def hand_run(cfg, warmup: int) -> float:
    """The loop a careful user writes by hand: sample, forward, loss, backward, step."""
    rng.seed_everything(cfg.train.seed)
    splits = data.build(cfg.data)
    model = models.build(cfg.model, splits.spec)
    x_all, y_all = splits.train.tensors
    opt = build_optimizer(model, cfg.optim, torch.device("cpu"))
    sched = build_scheduler(opt, cfg.optim, cfg.train.steps)
    g = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(len(x_all), generator=g)
    batch, at, stamps = cfg.data.batch_size, 0, {}
    model.train()
    for step in range(1, cfg.train.steps + 1):
        if at + batch > len(order):
            order, at = torch.randperm(len(x_all), generator=g), 0
        idx = order[at : at + batch]
        at += batch
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        stamps[step] = time.perf_counter()
    return (stamps[cfg.train.steps] - stamps[warmup]) / (cfg.train.steps - warmup)


def main() -> int:
    args = arguments(__doc__)
    os.environ["WANDB_MODE"] = "disabled"
    cfg = config.load(None, [*BASE, f"train.steps={args.steps}", f"data.batch_size={args.batch}"])
    with tempfile.TemporaryDirectory() as tmp:
        hpc_dl_run(cfg, Path(tmp) / "first", args.warmup)  # imports, allocator, caches
        hand_run(cfg, args.warmup)

        def run(name: str, i: int) -> float:
            return (
                hpc_dl_run(cfg, Path(tmp) / f"{i:03d}", args.warmup) if name == "hpc_dl" else hand_run(cfg, args.warmup)
            )

        pairs = alternate("hpc_dl", "hand", run, args.pairs)
    setup = {"base": BASE, "steps": args.steps, "warmup_steps": args.warmup, "batch_size": args.batch,
             "pairs": args.pairs, "threads": torch.get_num_threads()}  # fmt: skip
    what = "step time of hpc_dl's trainer / a hand-written loop (median of alternating pairs); target <= 1.02"
    report("trainer_overhead", what, setup, "hpc_dl", "hand", pairs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
