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

``--set key=value`` changes both sides' config. On a GPU the hand loop follows the same
device, autocast dtype (bf16; not fp16, which needs a scaler), TF32 and channels_last
settings, and the clock is read after a device sync at the two steps the timing uses.
The hand loop never clips gradients: compare with ``--set train.grad_clip=null`` for the
same arithmetic, or without it to count clipping as the trainer's cost (the CPU result).

  python benchmarks/trainer_overhead.py --pairs 6 --out benchmarks/results/trainer_overhead_cpu.json
  python benchmarks/trainer_overhead.py --set model.name=resnet50 --set data.shape=[3,224,224] \
      --set train.channels_last=true --set train.grad_clip=null --batch 128    # on a GPU
"""

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from alternate import alternate, arguments, report, stamper

from hpc_dl import config, data, models
from hpc_dl.distributed import precision
from hpc_dl.distributed.strategy import select_device
from hpc_dl.training import rng
from hpc_dl.training.optim import build_optimizer, build_scheduler
from hpc_dl.training.run import train

BASE = ["data.name=synthetic_images", "data.on_device=true", "model.name=resnet20", "train.eval_every=0",
        "checkpoint.every=0", "log.plots=false", "log.progress=off", "log.wandb=false",
        "optim.warmup_steps=0"]  # fmt: skip


def hpc_dl_run(cfg, workdir: Path, warmup: int) -> float:
    stamps, steps = {}, cfg.train.steps
    train(cfg, run_dir=str(workdir), on_step=stamper(stamps, select_device(cfg.train.device), (warmup, steps)))
    return (stamps[steps] - stamps[warmup]) / (steps - warmup)


def hand_run(cfg, warmup: int) -> float:
    """The loop a careful user writes by hand: sample, forward, loss, backward, step."""
    t, steps = cfg.train, cfg.train.steps
    device = select_device(t.device)
    dtype = precision.autocast_dtype(t.precision, device)
    assert dtype != torch.float16, "the hand loop has no loss scaling: compare fp16 elsewhere"
    precision.configure_backends(t.tf32, t.deterministic)
    rng.seed_everything(t.seed)
    splits = data.build(cfg.data)
    model = precision.prepare_model(models.build(cfg.model, splits.spec), device, t.channels_last)
    x_all, y_all = (v.to(device) for v in splits.train.tensors)
    opt = build_optimizer(model, cfg.optim, device)
    sched = build_scheduler(opt, cfg.optim, steps)
    g = torch.Generator().manual_seed(t.seed)
    order = torch.randperm(len(x_all), generator=g).to(device)
    batch, at, stamps = cfg.data.batch_size, 0, {}
    stamp = stamper(stamps, device, (warmup, steps))
    model.train()
    for step in range(1, steps + 1):
        if at + batch > len(order):
            order, at = torch.randperm(len(x_all), generator=g).to(device), 0
        idx = order[at : at + batch]
        at += batch
        x = x_all[idx]
        if t.channels_last and x.dim() == 4:  # per batch, as the trainer does
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        stamp(step)
    return (stamps[steps] - stamps[warmup]) / (steps - warmup)


def main() -> int:
    args = arguments(__doc__)
    os.environ["WANDB_MODE"] = "disabled"
    cfg = config.load(None, [*BASE, f"train.steps={args.steps}", f"data.batch_size={args.batch}", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        hpc_dl_run(cfg, Path(tmp) / "first", args.warmup)  # imports, allocator, caches
        hand_run(cfg, args.warmup)

        def run(name: str, i: int) -> float:
            return (
                hpc_dl_run(cfg, Path(tmp) / f"{i:03d}", args.warmup) if name == "hpc_dl" else hand_run(cfg, args.warmup)
            )

        pairs = alternate("hpc_dl", "hand", run, args.pairs)
    setup = {"base": BASE, "overrides": args.overrides, "device": str(select_device(cfg.train.device)),
             "steps": args.steps, "warmup_steps": args.warmup, "batch_size": args.batch,
             "pairs": args.pairs, "threads": torch.get_num_threads()}  # fmt: skip
    what = "step time of hpc_dl's trainer / a hand-written loop (median of alternating pairs); target <= 1.02"
    report("trainer_overhead", what, setup, "hpc_dl", "hand", pairs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
