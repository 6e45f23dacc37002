"""What hpc_dl's telemetry costs: the same training with telemetry on and off, alternating, in one process.

  on:  a metrics record every 10 steps (one device sync, breakdown, MFU), the utilisation
       sampler thread (psutil, plus NVML on GPUs), W&B offline
  off: one record at the end, no sampler, no W&B

The step timer's marks stay in both (they are CUDA events on GPUs, read only at log
time). Each run is timed from the end of its warm-up steps to its last step through
``train(on_step=...)``, so start-up, evaluation and checkpointing are not counted; one
untimed run first absorbs the process's own warm-up (imports, allocator, caches).
Pairs alternate their order (on-off, off-on, ...) so drift on a shared machine hits
both sides; the result is the median of the per-pair ratios. ``--set key=value`` changes
both sides' config (``--set log.wandb=false`` leaves W&B out of 'on'); on a GPU the clock
is read after a device sync at the two steps the timing uses.

  python benchmarks/telemetry_overhead.py                      # CPU: CIFAR ResNet-20, synthetic data
  python benchmarks/telemetry_overhead.py --pairs 10 --out benchmarks/results/telemetry_overhead_cpu.json
"""

import os
import sys
import tempfile
from pathlib import Path

from alternate import alternate, arguments, report, stamper

from hpc_dl import config
from hpc_dl.distributed.strategy import select_device
from hpc_dl.training.run import train

BASE = ["data.name=synthetic_images", "data.on_device=true", "model.name=resnet20", "train.eval_every=0",
        "checkpoint.every=0", "log.plots=false", "log.progress=off", "optim.warmup_steps=0"]  # fmt: skip
MODES = {
    "on": ["log.every=10", "log.utilisation=true", "log.wandb=true", "log.sample_interval_s=1"],
    "off": ["log.every=1000000", "log.utilisation=false", "log.wandb=false"],
}


def timed_run(mode: str, args, workdir: Path, index: int) -> float:
    """Seconds per optimizer step after the warm-up steps."""
    sizes = [f"train.steps={args.steps}", f"data.batch_size={args.batch}"]
    cfg = config.load(None, BASE + MODES[mode] + sizes + args.overrides)
    stamps = {}
    stamp = stamper(stamps, select_device(cfg.train.device), (args.warmup, args.steps))
    train(cfg, run_dir=str(workdir / f"{index:03d}-{mode}"), on_step=stamp)
    return (stamps[args.steps] - stamps[args.warmup]) / (args.steps - args.warmup)


def main() -> int:
    args = arguments(__doc__)
    os.environ["WANDB_MODE"] = "offline"  # never online from a benchmark; 'on' includes W&B's cost
    with tempfile.TemporaryDirectory() as tmp:
        timed_run("off", args, Path(tmp), 999)  # first run in the process: imports, allocator, caches
        pairs = alternate("on", "off", lambda mode, i: timed_run(mode, args, Path(tmp), i), args.pairs)
    setup = {"base": BASE, "modes": MODES, "steps": args.steps, "warmup_steps": args.warmup,
             "batch_size": args.batch, "pairs": args.pairs, "overrides": args.overrides}  # fmt: skip
    what = "step time with telemetry on / off (median of alternating pairs); target < 1.01"
    report("telemetry_overhead", what, setup, "on", "off", pairs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
