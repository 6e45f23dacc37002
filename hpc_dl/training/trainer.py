"""The training loop: one loop for every model, data set and strategy.

What differs between one CPU process, DDP and DeepSpeed lives in the strategy
(backward, optimizer step, gradient sync, reductions, state); what is observed
(metrics file, progress, later W&B) receives records through ``observers``.
"""

import dataclasses
import math
import socket
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpc_dl import checkpoint
from hpc_dl.checkpoint import CheckpointDir
from hpc_dl.config import Config, flatten, to_dict
from hpc_dl.data.loader import BatchStream, eval_batches
from hpc_dl.data.spec import Splits
from hpc_dl.distributed import precision
from hpc_dl.distributed.strategy import Strategy
from hpc_dl.errors import ConfigError, JobError, first_line
from hpc_dl.fileio import DiskFullError
from hpc_dl.telemetry import memory, peaks
from hpc_dl.telemetry.record import Record
from hpc_dl.telemetry.stragglers import Stragglers
from hpc_dl.telemetry.timing import StepTimer
from hpc_dl.training import rng
from hpc_dl.training.optim import build_optimizer, build_scheduler
from hpc_dl.training.stop import SignalStop, Stopped


def _binary_loss(logits, y, reduction="mean"):
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1).float(), y.float(), reduction=reduction)


def _multiclass_loss(logits, y, reduction="mean"):
    # (N, C) logits with (N,) labels, or (N, T, V) with (N, T) next tokens
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(), reduction=reduction)


def _binary_correct(logits, y):
    return ((logits.squeeze(-1) > 0).long() == y).sum()


def _multiclass_correct(logits, y):
    return (logits.argmax(-1) == y).sum()


def _squared_error(output, y, reduction="mean"):
    # one output per sample against the standardised target
    return F.mse_loss(output.squeeze(-1).float(), y.float(), reduction=reduction)


def _absolute_error(output, y):
    return (output.squeeze(-1).float() - y.float()).abs().sum()


# task -> (loss, a second sum per batch): correct predictions, or for regression the absolute errors
TASKS = {
    "binary": (_binary_loss, _binary_correct),
    "multiclass": (_multiclass_loss, _multiclass_correct),
    "lm": (_multiclass_loss, _multiclass_correct),  # loss and accuracy per predicted token
    "regression": (_squared_error, _absolute_error),  # MSE of the standardised target; RMSE, MAE in its units
}
MAX_CONFUSION_CLASSES = 1000  # a test split's confusion matrix (C x C counts) up to this many classes
PER_CLASS = ("confusion", "per_class_accuracy")  # in the test result and summary.json, not in metrics.jsonl


class Trainer:
    def __init__(self, cfg: Config, strategy: Strategy, splits: Splits, model: nn.Module, lr_scale=None):
        t = cfg.train
        self.cfg, self.strategy, self.splits, self.device = cfg, strategy, splits, strategy.device
        self.dtype = precision.autocast_dtype(t.precision, self.device)
        self.data_device = self.device if cfg.data.on_device else None
        self._make_stream()
        if cfg.optim.warmup_steps >= self.total_steps:
            raise ConfigError(
                f"optim.warmup_steps = {cfg.optim.warmup_steps}: must be < the run's {self.total_steps} steps"
            )
        module = strategy.shard(precision.prepare_model(model, self.device, t.channels_last))
        optimizer = build_optimizer(module, cfg.optim, self.device, lr_scale)
        scheduler = build_scheduler(optimizer, cfg.optim, self.total_steps)
        scaler = precision.grad_scaler(self.device, self.dtype)
        self.model = strategy.setup(
            module, optimizer, scheduler, scaler, wrap=lambda m: precision.maybe_compile(m, t.compile, t.compile_mode)
        )
        self.loss_fn, self.correct_fn = TASKS[splits.spec.task]
        self.step = 0
        self.observers: list[Callable[[Record], None]] = []
        self.timer = StepTimer(self.device)
        strategy.time_communication(self.timer)
        self.flops_per_sample: float | None = None  # model FLOPs (forward + backward), for MFU
        self.peak_tflops: float | None = None
        self.achievable_tflops: float | None = cfg.log.achievable_tflops
        self.sampler = None  # telemetry.sampler.Sampler, when utilisation is sampled
        self.stragglers = Stragglers(cfg.log.straggler_margin)
        self.stop: SignalStop | None = None  # checkpoint and stop when a rank is signalled
        self.checkpoint_error: str | None = None  # a save that failed for lack of space (the run goes on)
        self.memory_dir = None  # where an out-of-memory snapshot goes (the run directory's memory/)
        self.mem_peak_gib = 0.0  # the largest peak any rank reported (see _own_times)

    def _make_stream(self) -> None:
        """The batch stream and the run's length, from the batch settings (again if a resume changes them)."""
        t, d, ws = self.cfg.train, self.cfg.data, self.strategy
        self.stream = BatchStream(
            self.splits.train, d.batch_size, t.seed, ws.rank, ws.world_size, accum=t.grad_accum,
            num_workers=d.num_workers, pin_memory=d.pin_memory and self.device.type == "cuda",
            persistent_workers=d.persistent_workers, device=self.data_device,
        )  # fmt: skip
        per_epoch = self.stream.batches_per_epoch // t.grad_accum  # whole steps: see BatchStream
        self.total_steps = t.steps or max(1, math.ceil(t.epochs * per_epoch))

    # ----------------------------------------------------------------- loop
    def fit(self, checkpoints: CheckpointDir | None = None, on_step: Callable[[int], None] = lambda s: None) -> dict:
        c = self.cfg.checkpoint
        self.checkpointer = (
            checkpoint.Checkpointer(self.strategy, checkpoints, c.format, c.async_save) if checkpoints else None
        )
        try:
            return self._fit(checkpoints, on_step)
        except Exception as e:
            if memory.is_oom(e):
                raise OutOfMemory(self._oom_message(e)) from e
            raise
        finally:
            if self.checkpointer:  # a save in flight is finished (or fails) before anything closes
                self.checkpointer.wait()

    def _fit(self, checkpoints: CheckpointDir | None, on_step: Callable[[int], None]) -> dict:
        t, accum, log_every = self.cfg.train, self.cfg.train.grad_accum, self.cfg.log.every
        batches = iter(self.stream)
        window = _Window(self, checkpoints)
        self.model.train()
        while self.step < self.total_steps:
            lr = self.strategy.optimizer.param_groups[0]["lr"]
            for micro in range(accum):
                x, y = self._to_device(next(batches), train=True)
                self.timer.mark("data")
                with self.strategy.no_sync(micro == accum - 1), precision.autocast(self.device, self.dtype):
                    logits = self.model(x)
                    loss = self.loss_fn(logits, y)
                self.strategy.backward(loss / accum)
                window.add(loss.detach(), self.correct_fn(logits.detach(), y), y, self.step + 1)
                self.timer.mark("compute")
            window.add_grad(self.strategy.step(t.grad_clip), self.step + 1)
            self.timer.mark("optimizer")
            self.step += 1
            on_step(self.step)

            last = self.step == self.total_steps
            if self.step % log_every == 0 or last:
                self._emit(window.record(lr))
            if t.eval_every and self.step % t.eval_every == 0 and not last:
                self._emit(self.evaluate("val"))
                self.model.train()
                window.restart_clock()  # throughput counts training only
            saved = checkpoints and self.cfg.checkpoint.every and self.step % self.cfg.checkpoint.every == 0
            if saved and not last:
                window.check_finite()  # never save weights a non-finite loss has reached
                self.save(checkpoints)
                window.restart_clock()
            if self.stop and not last and self.stop.agreed(self.strategy):  # pre-empted: checkpoint, then go
                self._stop_here(window, checkpoints, lr, saved)
            self.timer.mark("other")
        window.check_finite()
        results = {split: self.evaluate(split) for split in ("val", "test")}
        for record in results.values():
            self._emit(_without_per_class(record))
        if checkpoints:
            self.save(checkpoints)
        return results

    def _oom_message(self, error: Exception) -> str:
        """Which rank ran out, with what batch and model, how much it held; on a GPU the allocator's
        snapshot is written for PyTorch's memory viewer."""
        d, t, dev = self.cfg.data, self.cfg.train, self.device
        params = sum(p.numel() for p in self.strategy.module.parameters())
        snap = memory.snapshot(dev, self.memory_dir, self.strategy.rank) if self.memory_dir else None
        return (
            f"out of memory on rank {self.strategy.rank} ({socket.gethostname()}, {dev}) at step {self.step + 1}: "
            f"batch {d.batch_size} x {tuple(self.splits.spec.input_shape)} per micro-step (x {t.grad_accum} "
            f"accumulated), model {params:,} parameters ({params * 4 / 2**30:.2f} GiB in fp32, before gradients "
            f"and optimizer state), peak {memory.peak_gib(dev):.2f} GiB{memory.capacity(dev)}"
            + (f"; allocator snapshot {snap} (open it at https://pytorch.org/memory_viz)" if snap else "")
            + ". Lower data.batch_size (train.grad_accum keeps the global batch), use train.precision=bf16, "
            "train.activation_checkpointing, or dist.strategy=fsdp" + f" ({first_line(error)})"
        )

    def _stop_here(self, window, checkpoints: CheckpointDir | None, lr: float, saved: bool) -> None:
        """Every rank stops after this step: log it, checkpoint it (unless just saved), raise Stopped."""
        if self.step % self.cfg.log.every:
            self._emit(window.record(lr))
        if checkpoints and not saved:
            window.check_finite()
            self.save(checkpoints)
        if self.checkpointer:
            self.checkpointer.wait()  # the requeued job must find it
        latest = checkpoints.latest() if checkpoints else None
        raise Stopped(self.step, self.stop.received or "(another rank's signal)", str(latest))

    @torch.no_grad()
    def evaluate(self, split: str) -> Record:
        """Loss and accuracy (regression: RMSE, MAE, R^2) over the split, every rank a share of it;
        the test split also gets its confusion matrix and per-class accuracy (classification)."""
        self.model.eval()
        ws, d = self.strategy, self.cfg.data
        sums = _EvalSums(self, split)
        dataset = getattr(self.splits, split)
        for batch in eval_batches(dataset, d.eval_batch_size, ws.rank, ws.world_size, d.num_workers, self.data_device):
            x, y = self._to_device(batch, train=False)
            with precision.autocast(self.device, self.dtype):
                output = self.model(x)
            sums.add(output, y)
        return {"split": split, "step": self.step, **sums.result(ws.all_reduce_sum(sums.flat()))}

    def _to_device(self, batch, train: bool):
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        if self.splits.batch_transform is not None:
            x = self.splits.batch_transform(x, train)
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _emit(self, record: Record) -> None:
        if self.strategy.is_main:
            for observe in self.observers:
                observe(record)

    # ---------------------------------------------------------------- state
    def save(self, checkpoints: CheckpointDir) -> None:
        """Model and optimizer state come from the strategy; the loop adds its own position and
        every rank's RNG state (dropout and augmentation differ per rank)."""
        extra = {
            "step": self.step,
            "data": self.stream.state_dict(),
            "rng": self.strategy.gather_object(rng.get_state()),
            "world_size": self.strategy.world_size,
            "total_steps": self.total_steps,
            "config": to_dict(self.cfg),
        }
        try:
            self.checkpointer.save(self.step, extra)
        except DiskFullError as e:  # keep training: the previous checkpoint is intact
            self.checkpoint_error = str(e)
            print(f"warning: {e}; the previous checkpoint is kept ({checkpoints.latest()})", file=sys.stderr)

    def load(self, path) -> dict:
        state = checkpoint.load_into(self.strategy, path, check=lambda state: self._check_resumable(path, state))
        step = int(state["step"])
        planned = state.get("total_steps") or _planned_steps(state.get("config"))
        if planned and self.total_steps != planned:
            if self.total_steps < planned:
                raise ConfigError(
                    f"--resume {path}: this run has {self.total_steps} steps, but the checkpoint's run was planned "
                    f"for {planned} (it is at step {step}); a shorter run would rewrite a schedule already followed. "
                    "Resume with the same train.steps/epochs, or start a new run"
                )
            schedule = self.strategy.scheduler.lr_lambdas[0]  # the LR schedule is a function of the run length
            before = schedule(step)
            schedule.total = self.total_steps
            print(
                f"note: resuming at step {step} a run planned for {planned} steps, now {self.total_steps}: the LR "
                f"schedule is re-planned for {self.total_steps} steps (multiplier at step {step}: {before:.4g} -> "
                f"{schedule(step):.4g})",
                file=sys.stderr,
            )
        self.step = step
        self.stream.load_state_dict(state["data"])
        self._restore_rng(state)
        return state

    def _restore_rng(self, state: dict) -> None:
        """Rank r continues rank r's random streams (dropout, augmentation); a rank the checkpoint's
        run did not have starts one seeded by (seed, rank, step), so it repeats no earlier draw."""
        saved, rank = state["rng"], self.strategy.rank
        if rank < len(saved):
            rng.set_state(saved[rank])
        else:
            rng.seed_everything(
                int(np.random.SeedSequence([self.cfg.train.seed, rank, int(state["step"])]).generate_state(1)[0])
            )

    def _check_resumable(self, path, state: dict) -> None:
        """Refuse, before anything is loaded or written, a checkpoint this run cannot continue; adapt
        the batch settings to another world size (the global batch is kept)."""
        _check_config(path, state, self.cfg)
        self._keep_global_batch(path, state)

    def _keep_global_batch(self, path, state: dict) -> None:
        """Samples per optimizer step = ranks x data.batch_size x train.grad_accum must stay what the
        checkpoint's run used: the data position, the LR schedule and the optimizer's steps count in it.
        On another world size gradient accumulation makes up the difference, or the run refuses."""
        old = state.get("config") or {}
        old_ws = int(state["world_size"])
        old_bs = (old.get("data") or {}).get("batch_size", self.cfg.data.batch_size)
        old_accum = (old.get("train") or {}).get("grad_accum", self.cfg.train.grad_accum)
        target = old_ws * old_bs * old_accum
        ws, bs, accum = self.strategy.world_size, self.cfg.data.batch_size, self.cfg.train.grad_accum
        if ws * bs * accum == target:
            if (bs, accum) != (old_bs, old_accum) or ws != old_ws:
                self._say(f"note: resuming on {ws} rank(s) a run of {old_ws}: {ws} x {bs} x {accum} = {target} samples "
                          "per step, as before")  # fmt: skip
            return
        if self.strategy.name == "deepspeed" or target % (ws * bs):
            raise ConfigError(
                f"--resume {path}: its run took {old_ws} x {old_bs} x {old_accum} = {target} samples per step "
                f"(ranks x data.batch_size x train.grad_accum); this one would take {ws} x {bs} x {accum} = "
                f"{ws * bs * accum}, which changes the data position and the schedule: "
                + _batch_hint(
                    target, ws, bs, (old_ws, old_bs, old_accum) if self.strategy.name == "deepspeed" else None
                )
            )
        new_accum = target // (ws * bs)
        self._say(f"note: resuming on {ws} rank(s) a run of {old_ws}: train.grad_accum {accum} -> {new_accum}, "
                  f"so a step is still {ws} x {bs} x {new_accum} = {target} samples")  # fmt: skip
        self.cfg.train.grad_accum = new_accum
        self._make_stream()

    def _say(self, line: str) -> None:
        if self.strategy.is_main:
            print(line, file=sys.stderr, flush=True)

    @property
    def epoch(self) -> float:
        return self.stream.epoch + self.stream.batch / self.stream.batches_per_epoch


# What may differ between a run and the checkpoint it resumes from: how it is observed, saved,
# loaded and launched, and where its files are. The rest defines the training itself.
_FREE_ON_RESUME = ("log.", "checkpoint.", "slurm.", "dist.strategy", "dist.timeout_s", "dist.startup_timeout_s",
                   "dist.preflight",
                   "dist.fsdp_", "data.batch_size", "train.grad_accum",  # the global batch is checked instead
                   "dist.bucket_mb", "dist.gradient_as_bucket_view", "dist.static_graph", "train.eval_every",
                   "train.stop_signals", "train.activation_checkpointing",
                   "train.device", "train.compile", "train.compile_mode", "train.channels_last", "train.deterministic",
                   "train.grad_clip", "train.steps", "train.epochs", "data.num_workers", "data.persistent_workers",
                   "data.pin_memory", "data.on_device", "data.eval_batch_size", "data.root", "data.path",
                   "transfer.weights")  # fmt: skip


def _batch_hint(target: int, ws: int, bs: int, only: tuple | None) -> str:
    """Settings that make ``target`` samples per step on ``ws`` ranks (``only``: the one allowed)."""
    if only:
        return f"resume on {only[0]} rank(s) with data.batch_size={only[1]} train.grad_accum={only[2]}"
    if target % ws:
        return f"resume on a number of ranks that divides {target}"
    per_rank = target // ws
    fits = max(b for b in range(1, min(bs, per_rank) + 1) if per_rank % b == 0)
    return f"set data.batch_size={fits} train.grad_accum={per_rank // fits}"


def _check_config(path, state: dict, cfg: Config) -> None:
    """Refuse a resume whose config changes what was trained (the strategy may change: single and
    DDP write the same state; DeepSpeed's folders are refused by their loader)."""
    if not state.get("config"):
        return
    old, new = flatten(state["config"]), flatten(to_dict(cfg))
    # A key the checkpoint's config lacks and this one holds at its default is a setting hpc_dl
    # added since (data.task): it cannot have changed what was trained.
    added = {k for k in new.keys() - old.keys() if new[k] == _defaults(cfg).get(k)}
    changed = [
        k for k in sorted(old.keys() | new.keys() - added)
        if old.get(k) != new.get(k) and not k.startswith(_FREE_ON_RESUME)
    ]  # fmt: skip
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"checkpoint {path} does not fit this run: the config changes what it was trained with ({shown}{more}); "
            "resume with the run's own config.yaml, or start a new run (transfer.weights=RUN starts from its weights)"
        )


def _defaults(cfg: Config) -> dict:
    """Every setting's default, flattened, for the model and data variants ``cfg`` uses."""
    return flatten({f.name: to_dict(type(getattr(cfg, f.name))()) for f in dataclasses.fields(cfg)})


def _planned_steps(saved: dict | None) -> int | None:
    """The run length of a checkpoint written before ``total_steps`` was saved, when its config says."""
    return ((saved or {}).get("train") or {}).get("steps")


class OutOfMemory(JobError):
    """A rank ran out of device (or host) memory."""


class NonFiniteLoss(JobError):
    """The training loss or the gradient became NaN or infinite."""


class _Window:
    """Training loss and throughput over one logging window, kept on the device
    so the hot loop never waits for it; read (one sync) only when logged."""

    def __init__(self, trainer: Trainer, checkpoints: CheckpointDir | None = None):
        self.trainer, self.checkpoints = trainer, checkpoints
        self.grad_norm = torch.zeros(())
        self.reset()

    def reset(self):
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.trainer.device)  # loss, correct, targets
        # the first step with a NaN/inf: loss, this rank's own gradient, gradient norm (after any reduction)
        self.first_bad, self.first_bad_own, self.first_bad_grad = (
            torch.full((), -1, dtype=torch.int64, device=self.trainer.device) for _ in range(3)
        )
        self.restart_clock()

    def restart_clock(self):
        self.trainer.timer.reset()
        self.t0 = time.perf_counter()
        self.timed_samples = self.timed_targets = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, y: torch.Tensor, step: int) -> None:
        # Kept on the device (no sync per step); read at log windows and before every checkpoint.
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), step, self.first_bad)
        self.sums[0] += loss.double() * y.numel()  # loss is a mean over targets (tokens for a LM)
        self.sums[1] += correct
        self.sums[2] += y.numel()
        self.timed_samples += len(y)
        self.timed_targets += y.numel()

    def add_grad(self, norm: torch.Tensor, step: int) -> None:
        """The step's gradient norm (before clipping). Not checked with fp16's loss scaler, which
        skips steps with inf gradients by design, nor DeepSpeed's, which reports no norm on some steps."""
        self.grad_norm = norm
        s = self.trainer.strategy
        if s.scaler.is_enabled() or s.name == "deepspeed":
            return
        self.first_bad_grad = torch.where((self.first_bad_grad < 0) & ~torch.isfinite(norm), step, self.first_bad_grad)
        if s.own_grad_nonfinite is not None:
            self.first_bad_own = torch.where((self.first_bad_own < 0) & s.own_grad_nonfinite, step, self.first_bad_own)

    def check_finite(self) -> None:
        """Stop the run when any rank's loss or the gradient was NaN or infinite, naming the first
        step, the rank, its host, and which of the two it was."""
        tr = self.trainer
        firsts = torch.stack([self.first_bad, self.first_bad_own, self.first_bad_grad])
        flag = (firsts.max() >= 0).to(torch.float64).reshape(1)
        if tr.strategy.all_reduce_sum(flag).item() == 0:
            return
        where = tr.strategy.gather_object((*firsts.tolist(), socket.gethostname()))
        # the earliest step; at the same step the loss came first, then a rank's own gradient, then the reduced one
        step, kind, rank = min((s, k, r) for r, w in enumerate(where) for k, s in enumerate(w[:3]) if s >= 0)
        if kind == 2 and tr.strategy.world_size > 1:  # seen only after the reduction: the same on every rank
            what = f"the gradient became non-finite at step {step} on every rank after the all-reduce (finite loss)"
        else:
            value = ("training loss", "gradient (before the all-reduce, with a finite loss)",
                     "gradient (with a finite loss)")[kind]  # fmt: skip
            what = f"the {value} became non-finite at step {step} on rank {rank} ({where[rank][3]})"
        latest = self.checkpoints.latest() if self.checkpoints else None
        raise NonFiniteLoss(
            f"{what}; stopped without saving it. The last good checkpoint is {latest or '(none written)'}. Lower "
            "optim.lr, set train.grad_clip, use fp32, or look for extreme values in the data"
        )

    def record(self, lr: float) -> Record:
        tr = self.trainer
        self.check_finite()
        loss_sum, correct, targets = tr.strategy.all_reduce_sum(self.sums).tolist()
        elapsed = time.perf_counter() - self.t0
        record: Record = {
            "split": "train",
            "step": tr.step,
            "epoch": round(tr.epoch, 4),
            "loss": loss_sum / targets,
            **_train_metric(tr.splits.spec, loss_sum, correct, targets),
            "lr": lr,
            "grad_norm": float(self.grad_norm),
            "samples_per_s": self.timed_samples * tr.strategy.world_size / elapsed if elapsed > 0 else None,
        }
        if tr.splits.spec.task == "lm":
            record["tokens_per_s"] = self.timed_targets * tr.strategy.world_size / elapsed if elapsed > 0 else None
        timing = _breakdown(tr.timer)
        record.update(timing)
        own = _own_times(tr, timing)
        record["mem_peak_gib"] = own["mem_peak_gib"]
        if tr.flops_per_sample and elapsed > 0:
            work = tr.flops_per_sample * self.timed_samples  # this rank's share of the job
            record["tflops_per_device"] = work / elapsed / 1e12
            if tr.peak_tflops:
                record["mfu"], record["peak_tflops"] = peaks.mfu(work, elapsed, 1, tr.peak_tflops), tr.peak_tflops
            if tr.achievable_tflops:
                record["mfu_achievable"] = peaks.mfu(work, elapsed, 1, tr.achievable_tflops)
        if tr.sampler is not None or tr.strategy.world_size > 1:  # every rank's times and utilisation
            ranks = tr.strategy.gather_object(own | (tr.sampler.window() if tr.sampler else {}))
            record["ranks"] = ranks
            record["mem_peak_gib"] = max(r["mem_peak_gib"] for r in ranks)
            for key in ("gpu_util", "cpu_percent"):
                if key in ranks[0]:
                    record[f"{key}_min"] = min(r[key] for r in ranks)
                    record[f"{key}_max"] = max(r[key] for r in ranks)
            slow = tr.stragglers.update(ranks)
            record["stragglers"] = len(slow)
            if slow:
                record["straggler_ranks"] = [s["rank"] for s in slow]
                for s in slow:
                    tr._say(Stragglers.line(s))
        tr.mem_peak_gib = max(tr.mem_peak_gib, record["mem_peak_gib"])
        self.reset()
        return record


def _train_metric(spec, loss_sum: float, second: float, targets: float) -> dict:
    """A training window's accuracy, or for regression its RMSE and MAE in the target's units."""
    if spec.task != "regression":
        return {"accuracy": second / targets}
    scale = spec.target_units[1]
    return {"rmse": scale * math.sqrt(loss_sum / targets), "mae": scale * second / targets}


def _without_per_class(record: Record) -> Record:
    return {k: v for k, v in record.items() if k not in PER_CLASS}


class _EvalSums:
    """One evaluation's sums, kept on the device and all-reduced as one float64 vector (exact for
    counts below 2^53), so every metric is the whole split's whichever rank evaluated what.
    Classification: loss, correct, targets, samples, and for the test split the confusion matrix
    (rows the true class, columns the predicted one; a binary model predicts its second class when
    its logit is > 0). Regression, in standardised units: squared and absolute errors, the targets'
    sum and sum of squares (for R^2 about the split's own mean), targets, samples."""

    def __init__(self, trainer: Trainer, split: str):
        self.spec, self.loss_fn, self.second_fn = trainer.splits.spec, trainer.loss_fn, trainer.correct_fn
        self.regression = self.spec.task == "regression"
        device = trainer.device
        self.sums = torch.zeros(6 if self.regression else 4, dtype=torch.float64, device=device)
        c = self.spec.num_classes
        per_class = split == "test" and self.spec.task in ("binary", "multiclass") and c <= MAX_CONFUSION_CLASSES
        self.classes = c if per_class else 0
        self.confusion = torch.zeros(c * c if per_class else 0, dtype=torch.int64, device=device)

    def add(self, output: torch.Tensor, y: torch.Tensor) -> None:
        if self.regression:
            error, yd = output.squeeze(-1).double() - y.double(), y.double()
            self.sums[:4] += torch.stack([error.square().sum(), error.abs().sum(), yd.sum(), yd.square().sum()])
        else:
            self.sums[:2] += torch.stack([self.loss_fn(output, y, "sum").double(), self.second_fn(output, y).double()])
        self.sums[-2] += y.numel()
        self.sums[-1] += len(y)
        if self.classes:
            c = self.classes
            predicted = (output.squeeze(-1) > 0).long() if self.spec.task == "binary" else output.argmax(-1)
            self.confusion += torch.bincount(y.long() * c + predicted, minlength=c * c)

    def flat(self) -> torch.Tensor:
        return torch.cat([self.sums, self.confusion.double()])

    def result(self, reduced: torch.Tensor) -> dict:
        totals = reduced[: len(self.sums)].tolist()
        n, samples = totals[-2], int(totals[-1])
        if self.regression:
            return {**_regression_metrics(totals[:4], n, self.spec.target_units[1]), "samples": samples}
        out = {"loss": totals[0] / n, "accuracy": totals[1] / n, "samples": samples}
        if self.classes:
            matrix = reduced[len(self.sums) :].round().long().view(self.classes, self.classes)
            out.update(_per_class(matrix, self.spec.class_names))
        return out


def _regression_metrics(sums: list[float], n: float, scale: float) -> dict:
    """MSE of the standardised target (the loss), and RMSE, MAE and R^2 in the target's own units."""
    squared, absolute, total, total_sq = sums
    spread = total_sq - total * total / n  # about the split's own mean: R^2's total sum of squares
    return {
        "loss": squared / n,
        "rmse": scale * math.sqrt(squared / n),
        "mae": scale * absolute / n,
        "r2": 1 - squared / spread if spread > 0 else None,  # undefined for a constant target
    }


def _per_class(matrix: torch.Tensor, names: list[str]) -> dict:
    """The confusion matrix as lists, and each class's accuracy (its recall: the share of its
    samples predicted as it; None for a class absent from the split), by class name."""
    c = len(matrix)
    names = names if len(names) == c else [str(i) for i in range(c)]
    rows, right = matrix.sum(1).tolist(), matrix.diagonal().tolist()
    return {
        "confusion": matrix.tolist(),
        "per_class_accuracy": {name: (r / t if t else None) for name, r, t in zip(names, right, rows)},
    }


def _own_times(tr: Trainer, timing: dict) -> dict:
    """This rank's times per step and its peak memory; own = the step minus the wait in the gradient
    all-reduce (see telemetry/stragglers.py)."""
    step, comm = timing.get("step_s"), timing.get("comm_s", 0.0)
    own = None if step is None else max(step - comm, 0.0)
    return {"rank": tr.strategy.rank, "host": socket.gethostname(), "step_s": step, "data_s": timing.get("data_s"),
            "comm_s": timing.get("comm_s"), "own_s": own, "mem_peak_gib": memory.peak_gib(tr.device)}  # fmt: skip


def _breakdown(timer: StepTimer) -> dict:
    """Mean seconds per step of each phase; data + compute + optimizer + other = step."""
    steps = sum(1 for phase, _ in timer.marks if phase == "optimizer")
    if not steps:
        return {}
    totals = timer.totals()
    out = {f"{phase}_s": seconds / steps for phase, seconds in totals.items()}
    out["step_s"] = sum(totals.values()) / steps
    if timer.comm:
        out["comm_s"] = timer.comm / steps  # all-reduce, overlapped with compute
    return out
