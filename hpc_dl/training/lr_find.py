"""The learning-rate range test (Smith 2015, "Cyclical learning rates"; fast.ai's ``lr_find``).

The model, data, optimizer, precision and clipping are built as a training run builds them
(``run._build``: the same Trainer), on one process. Then for ``steps`` optimizer steps the LR
grows exponentially from ``start`` to ``end`` while the training loss of each step is recorded,
exponentially smoothed (beta 0.98, bias-corrected as Adam corrects its moments). The test stops
early when the smoothed loss exceeds 4x the lowest seen (it has diverged) or a loss is not finite.

The suggestion is the LR where the smoothed loss falls fastest (the steepest descent per decade
of LR), looked for before its minimum; when the curve is too short for a slope, a tenth of the LR
of the minimum. Both are in the result. The model is thrown away: nothing is saved or restored.
"""

import copy
import datetime
import math
from pathlib import Path

import numpy as np

from hpc_dl import config
from hpc_dl.distributed import cluster
from hpc_dl.errors import UserError
from hpc_dl.fileio import write_json

# torch is imported by the functions that need it: `hpc-dl lr-find` checks its arguments without it.
STEEPEST = "steepest descent of the smoothed loss"
TENTH = "a tenth of the LR of the lowest smoothed loss"
LOSS_LABELS = {  # the y axis: what the trainer minimises for each task
    "multiclass": "loss (cross-entropy, nats)",
    "binary": "loss (binary cross-entropy, nats)",
    "lm": "loss (cross-entropy, nats per token)",
    "regression": "loss (mean squared error, scaled target)",
}


def check_range(steps: int, start: float, end: float) -> None:
    """The sweep's arguments, checked before anything is built."""
    if steps < 5:
        raise UserError(f"--steps {steps}: must be at least 5")
    if not (start > 0 and math.isfinite(start)):
        raise UserError(f"--start {start:g}: must be a learning rate > 0")
    if not (end > start and math.isfinite(end)):
        raise UserError(f"--end {end:g}: must be greater than --start {start:g}")


def learning_rates(steps: int, start: float, end: float) -> np.ndarray:
    """``steps`` rates from ``start`` to ``end``, evenly spaced on a log scale."""
    return start * (end / start) ** (np.arange(steps) / (steps - 1))


def one_process(cfg: config.Config, steps: int) -> config.Config:
    """A copy of the config for the test: ``steps`` optimizer steps, no warm-up, one process."""
    world = cluster.detect()
    if world.world_size > 1:
        raise UserError(
            f"lr-find runs on one process, but {world.world_size} were started (by {world.launcher}): run "
            "`hpc-dl lr-find` on its own, without torchrun or srun (on a GPU node it uses one GPU)"
        )
    cfg = copy.deepcopy(cfg)
    cfg.train.steps, cfg.train.epochs = steps, None
    cfg.optim.warmup_steps = 0  # the LR is set at every step; the schedule's multiplier is overwritten
    cfg.dist.strategy = "single"
    return cfg


def find(cfg: config.Config, steps: int = 100, start: float = 1e-7, end: float = 10.0, beta: float = 0.98,
         diverge: float = 4.0, own=None) -> dict:  # fmt: skip
    """Run the range test on the model and data of ``cfg`` (or ``own``'s module and splits, a
    ``run.Own`` as ``run.train`` takes it); returns the curve and the suggestion."""
    from hpc_dl.distributed import strategy as strategies
    from hpc_dl.training.run import Own, _build  # the same model, data and Trainer as a training run

    check_range(steps, start, end)
    cfg = one_process(cfg, steps)
    strategy = strategies.build(cfg)
    try:
        trainer = _build(cfg, strategy, own or Own()).trainer  # seeded, transfer weights in: as in training
        curve = _sweep(trainer, learning_rates(steps, start, end), beta, diverge)
    finally:
        strategy.close()
    lrs, smoothed = curve["lrs"], curve["smoothed"]
    if not smoothed:
        raise UserError(f"lr-find: the loss was not finite from the first step (lr {start:g}): lower --start")
    lr, method = suggest(lrs, smoothed)
    lowest = int(np.argmin(smoothed))
    task = trainer.splits.spec.task
    return {
        "model": cfg.model.name, "data": cfg.data.name, "task": task, "loss_label": LOSS_LABELS.get(task, "loss"),
        "steps": steps, "start": start, "end": end, "beta": beta, "device": str(strategy.device),
        **curve, "suggestion": lr, "suggestion_method": method,
        "min_loss_lr": lrs[lowest], "min_loss_lr_over_10": lrs[lowest] / 10,
    }  # fmt: skip


def _sweep(trainer, lrs: np.ndarray, beta: float, diverge: float) -> dict:
    """Train one step at each LR; stop when the smoothed loss passes ``diverge`` x its lowest."""
    scales = [g["initial_lr"] / trainer.cfg.optim.lr for g in trainer.strategy.optimizer.param_groups]
    batches = iter(trainer.stream)
    trainer.model.train()
    out = {"lrs": [], "losses": [], "smoothed": [], "stopped": None}
    average, best = 0.0, math.inf
    for i, lr in enumerate(lrs.tolist()):
        loss = _step(trainer, batches, lr, scales)
        if not math.isfinite(loss):
            out["stopped"] = f"the loss was not finite at step {i + 1} (lr {lr:.3g})"
            break
        average = beta * average + (1 - beta) * loss
        smoothed = average / (1 - beta ** (i + 1))  # bias correction: the average starts at 0
        for key, value in (("lrs", lr), ("losses", loss), ("smoothed", smoothed)):
            out[key].append(value)
        if i > 0 and smoothed > diverge * best:
            out["stopped"] = f"diverged at step {i + 1} (lr {lr:.3g}): smoothed loss > {diverge:g}x the lowest"
            break
        best = min(best, smoothed)
    return out


def _step(trainer, batches, lr: float, scales: list[float]) -> float:
    """One optimizer step at ``lr`` (transfer learning's lower backbone LR kept in proportion),
    with the run's accumulation, precision and clipping; returns the step's mean loss."""
    from hpc_dl.distributed import precision

    for group, scale in zip(trainer.strategy.optimizer.param_groups, scales):
        group["lr"] = lr * scale
    accum, total = trainer.cfg.train.grad_accum, 0.0
    for _ in range(accum):
        x, y = trainer._to_device(next(batches), train=True)
        with precision.autocast(trainer.device, trainer.dtype):
            loss = trainer.loss_fn(trainer.model(x), y)
        trainer.strategy.backward(loss / accum)
        total += float(loss.detach()) / accum
    trainer.strategy.step(trainer.cfg.train.grad_clip)
    return total


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str]:
    """(learning rate, how it was chosen): where the smoothed loss falls fastest per decade of LR,
    before its minimum and after the first tenth of the sweep (at most 10 steps), whose losses
    say more about the start than the rate; else a tenth of the LR at the minimum."""
    lowest = int(np.argmin(smoothed))
    skip = min(len(smoothed) // 10, 10)
    if lowest - skip >= 2:  # the slope at each point before the minimum (central differences inside)
        slope = np.gradient(np.asarray(smoothed[skip : lowest + 1]), np.log10(lrs[skip : lowest + 1]))[:-1]
        return float(lrs[skip + int(np.argmin(slope))]), STEEPEST
    return float(lrs[lowest] / 10), TENTH


def figure(result: dict):
    """The loss against the LR (log scale): each step's loss, the smoothed curve, the suggestion marked."""
    from hpc_dl.telemetry.plots import plt

    lrs, smoothed, lr = result["lrs"], np.asarray(result["smoothed"]), result["suggestion"]
    losses = np.asarray(result["losses"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100, layout="constrained")
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss of each step")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label=f"smoothed (beta {result['beta']:g})")
    at = float(np.interp(np.log(lr), np.log(lrs), smoothed))
    how = result["suggestion_method"]
    ax.plot([lr], [at], "o", color="tab:red", markersize=9, label=f"suggestion: {lr:.2g} ({how})")
    ax.axvline(lr, color="tab:red", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(result["loss_label"])
    low, first = min(smoothed.min(), losses.min()), max(smoothed[0], losses[0])
    top = float(max(first, min(smoothed.max(), 4 * low)))  # not the divergence's spike
    ax.set_ylim(low - 0.05 * (top - low + 1e-12), top + 0.1 * (top - low + 1e-12))
    stopped = result["stopped"]
    ran = f"{len(lrs)} of {result['steps']} steps" + (f"; {stopped.split(' (')[0]}" if stopped else "")
    ax.set_title(f"LR range test: {result['model']} on {result['data']}, {ran}\n"
                 f"suggested learning rate {lr:.2g} (optim.lr={lr:.2g})")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def default_out(cfg: config.Config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.log.dir) / f"lr_find-{cfg.data.name}-{cfg.model.name}-{stamp}"


def write(result: dict, out: Path) -> list[Path]:
    """``lr_find.json`` and ``lr_find.png`` into ``out``."""
    from hpc_dl.telemetry.plots import plt

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    files = [out / "lr_find.json", out / "lr_find.png"]
    write_json(files[0], result)
    fig = figure(result)
    fig.savefig(files[1], dpi=110)
    plt.close(fig)
    return files
