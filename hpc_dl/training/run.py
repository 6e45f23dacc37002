"""One training run from a config: the run directory, resume, and the files it leaves.

Run directory (``log.dir/<run name>``):
  config.yaml     the fully resolved config; ``hpc-dl train config.yaml`` reruns it
  env.json        hpc_dl/torch/CUDA/NCCL versions, device, host, git revision, Slurm
  metrics.jsonl   one record per log step and per evaluation
  summary.json    final validation and test metrics, steps, time, throughput
  events.jsonl    each segment's start (step, ranks, hosts, Slurm restart) and end (outcome, message)
  loss.png, accuracy.png (rmse.png for a regression), confusion.png (classification: the test split)
  checkpoints/    step_*.pt and the ``latest`` pointer
  wandb/, wandb_id  the W&B run (offline without an API key) and its id, reused on resume
  profile/        torch.profiler traces, when log.profile_steps > 0
"""

import contextlib
import datetime
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hpc_dl import config, data, models
from hpc_dl.checkpoint import CheckpointDir
from hpc_dl.data.spec import Splits
from hpc_dl.distributed import cluster, hang, precision, preflight
from hpc_dl.distributed import strategy as strategies
from hpc_dl.distributed.process_group import named_failures
from hpc_dl.errors import JobError, UserError
from hpc_dl.fileio import DirectoryLock
from hpc_dl.models import checkpointing
from hpc_dl.telemetry import flops, peaks
from hpc_dl.telemetry.events import Events
from hpc_dl.telemetry.observer import RunObserver
from hpc_dl.training import rng, transfer
from hpc_dl.training.stop import SignalStop, Stopped, requeue_self
from hpc_dl.training.trainer import Trainer


def default_run_name(cfg: config.Config, names: tuple[str, str] | None = None) -> str:
    """<data>-<model>-<Slurm job id or local time>: a requeued job finds its own folder again."""
    job = cluster.job_id()
    stamp = f"job{job}" if job else datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    model, data = names or (cfg.model.name, cfg.data.name)
    return f"{data}-{model}-{stamp}"


def run_directory(cfg: config.Config, run_dir: str | None, names: tuple[str, str] | None = None) -> Path:
    if run_dir:
        return _creatable(Path(run_dir), f"--run-dir {run_dir}")
    _creatable(Path(cfg.log.dir), f"log.dir = '{cfg.log.dir}'")
    if cfg.log.run_name:
        return Path(cfg.log.dir) / cfg.log.run_name
    base = Path(cfg.log.dir) / default_run_name(cfg, names)
    path, n = base, 1
    while path.exists() and "SLURM_JOB_ID" not in os.environ:  # two runs started in the same second
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _creatable(path: Path, named: str) -> Path:
    """``path`` if it is, or can be made, a folder we can write in; else the error names the option.
    Checked on every rank before anything is written (mkdir's 'File exists' names neither)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{named}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{named}: cannot write in {existing} (permission denied)")
    return path


def _resume(trainer: Trainer, ckpts: CheckpointDir, resume: str | None) -> Path | None:
    """Load the checkpoint ``--resume`` asks for into the trainer; returns its path."""
    if resume is None and cluster.restart_count():
        resume = "auto"  # a requeued Slurm job continues where it stopped
    if resume is None:
        if ckpts.files():
            raise UserError(
                f"{ckpts.path.parent} already holds checkpoints of an earlier run; "
                'pass --resume auto (Python: resume="auto") to continue it, or choose another --run-dir '
                "(run_dir=) / log.run_name"
            )
        return None
    path = Path(resume)
    if resume != "auto" and (path.is_file() or path.name.startswith("step_")):  # one file, or DeepSpeed's folder
        trainer.load(path)
        return path
    if resume == "auto":
        folder = ckpts
    else:  # a run directory or its checkpoints folder
        folder = CheckpointDir(path / "checkpoints" if (path / "checkpoints").is_dir() else path, 1)
    found = folder.load_latest(loader=trainer.load)
    if found is None and resume != "auto":
        raise UserError(f"--resume {resume}: no checkpoint in that folder")
    return found[0] if found else None  # auto with nothing to resume: start fresh


def _flops_per_sample(cfg: config.Config, spec, own: nn.Module | None) -> float | None:
    """Counted once, on the meta device; a model the counter cannot trace just gets no MFU."""
    try:
        return flops.count(own or cfg.model, spec, cfg.data.batch_size).per_sample
    except Exception as e:  # noqa: BLE001 - telemetry must never stop a run
        print(f"warning: could not count the model's FLOPs ({type(e).__name__}: {e}); no MFU", file=sys.stderr)
        return None


def train(cfg: config.Config, run_dir: str | None = None, resume: str | None = None, on_step=None,
          own: "Own | None" = None) -> dict | None:  # fmt: skip
    """Run one training job; returns the summary on rank 0 and None on the other ranks.
    ``on_step(step)`` is called after every optimizer step (benchmarks time steps with it).
    ``own``: a module and/or data splits of the caller's, used instead of what the config's model
    and data sections would build (the Python API); afterwards it holds the trained module and the splits."""
    t0 = time.perf_counter()
    with SignalStop(cfg.train.stop_signals) as stop, contextlib.ExitStack() as held:  # a signal in set-up is kept
        strategy = strategies.build(cfg)
        events = Events()  # started once the run directory is known
        try:
            with named_failures(strategy.group):
                summary = _train(cfg, strategy, run_dir, resume, t0, on_step or (lambda step: None), stop, held, events,
                                 own or Own())  # fmt: skip
            events.end("completed")
            return summary
        except Stopped as e:
            events.end("stopped", str(e))
            raise
        except BaseException as e:
            events.end("failed", (str(e) or type(e).__name__)[:4000])
            raise
        finally:
            strategy.close()


def _claim(out: Path, strategy, held: contextlib.ExitStack) -> None:
    """Rank 0 locks the run directory for the whole run (a second run into it is refused, naming
    the holder) and removes what a killed run left half-written; every rank learns the outcome."""
    problem = None
    if strategy.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            held.callback(DirectoryLock(out).release)
            for partial in [p for p in out.glob(".*.tmp-*")] + CheckpointDir(out / "checkpoints", 1).clean_partial():
                if partial.exists():
                    partial.unlink()
                print(f"removed {partial}, left by an interrupted write", file=sys.stderr)
        except UserError as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot create the run directory {out} ({e.strerror})"
    problem = strategy.gather_object(problem)[0]
    if problem:
        raise UserError(problem)


def _train(cfg: config.Config, strategy, run_dir, resume, t0: float, on_step, stop: SignalStop, held,
           events: Events, own: "Own") -> dict | None:  # fmt: skip
    checked = _preflight(cfg, strategy)
    built = _build(cfg, strategy, own)
    trainer = built.trainer
    out = Path(strategy.gather_object(str(run_directory(cfg, run_dir, built.names)))[0])  # rank 0 names it for all
    ckpts = CheckpointDir(out / "checkpoints", cfg.checkpoint.keep_last)
    _claim(out, strategy, held)
    if strategy.group:  # hang dumps go here (distributed/hang.py)
        strategy.group.watch(out / hang.FOLDER)
        on_step = _watched(strategy.group, cfg.dist.timeout_s, on_step)
    resumed = _resume(trainer, ckpts, resume)
    if resumed and trainer.step >= trainer.total_steps:  # nothing to train: leave every file as it is
        return _finished_already(out, trainer, strategy)
    hosts = [m["host"] for m in strategy.group.members] if strategy.group else [socket.gethostname()]
    events.start(out, strategy.is_main, lambda: trainer.step, strategy.world_size, hosts, cluster.job_id(),
                 cluster.restart_count(), str(resumed) if resumed else None)  # fmt: skip
    with RunObserver(cfg, strategy, out, trainer.total_steps, trainer.step) as observer:
        for line in _introduction(cfg, strategy, built, out, resumed):
            observer.say(line)
        trainer.observers, trainer.sampler, trainer.stop = observer.observers, observer.sampler, stop
        trainer.memory_dir = out / "memory"
        try:
            results = trainer.fit(ckpts, on_step=observer.on_step(on_step))
        except Stopped as stopped:  # before anything closes: `scontrol requeue` ends this job step
            if strategy.is_main:
                requeue_self(stopped, observer.say)
            raise
    fingerprints = strategy.gather_object(strategy.parameter_fingerprint())
    if len(set(fingerprints)) > 1 and strategy.name != "deepspeed":
        observer.say(f"warning: the model differs between ranks after training: {fingerprints}")
    if not strategy.is_main:
        return None  # only rank 0 reports
    summary = _summary(cfg, strategy, built, out, resumed, t0, observer.throughput(), checked, results, ckpts)
    summary["parameter_fingerprints"] = fingerprints  # one per rank; equal when the replicas agree
    observer.finish(summary)
    if trainer.checkpoint_error:  # the results are written; say that the last checkpoint is not
        raise JobError(f"{trainer.checkpoint_error}; the run finished and wrote {out / 'summary.json'}, "
                       f"but its newest checkpoint is {summary['checkpoint']}")  # fmt: skip
    return summary


def _watched(group, timeout_s: float, on_step):
    """``on_step`` that also tells the process group: from the first step on, the training time-out
    applies, and the hang watchdog sees progress."""

    def step(n: int) -> None:
        group.progress(n, timeout_s)
        on_step(n)

    return step


def _preflight(cfg: config.Config, strategy) -> dict | None:
    """The all-reduce check and node health before training; returns what the slowest rank saw,
    the node pairs and the nodes or ranks found slow, for the summary."""
    if strategy.world_size == 1 or not cfg.dist.preflight:
        return None
    report = preflight.run(strategy)
    margin = cfg.log.straggler_margin  # one idea of "slow" for preflight and the stragglers
    if strategy.is_main:
        print(preflight.format_report(report, margin), flush=True)
    return {"busbw_gbs": min(r["busbw_gbs"] for r in report), "transport": report[0]["transport"],
            "pairs": preflight.node_pairs(report), "outliers": preflight.outliers(report, margin)}  # fmt: skip


@dataclass
class Own:
    """A module and data set the caller brought instead of the config's; after _build, the ones trained."""

    model: nn.Module | None = None
    splits: Splits | None = None
    data_name: str = "data"

    def __post_init__(self):
        self.given = self.model is not None  # a module of the caller's: FLOPs counted on a copy of it
        self.given_data = self.splits is not None

    def names(self, cfg: config.Config) -> tuple[str, str]:
        """What the run says it trains: the config's model and data names, or your class names."""
        model = type(self.model).__name__ if self.given else cfg.model.name
        return model, self.data_name if self.given_data else cfg.data.name


@dataclass
class Built:
    """The trainer and what the run says about how it was made."""

    trainer: Trainer
    splits: object
    parameters: int
    transferred: dict
    peak_source: str
    names: tuple[str, str]  # the model's and the data's


def _build(cfg: config.Config, strategy, own: Own) -> Built:
    precision.configure_backends(cfg.train.tf32, cfg.train.deterministic)
    rng.seed_everything(cfg.train.seed)  # the same initial weights on every rank
    splits = own.splits = own.splits or data.build(cfg.data)
    model = own.model = own.model or models.build(cfg.model, splits.spec)
    checkpointing.apply(model, cfg.train.activation_checkpointing)  # before a strategy shards it
    n_params = models.count_parameters(model)  # before a sharded strategy partitions it
    lr_scale, transferred = transfer.apply(model, cfg.transfer)
    trainer = Trainer(cfg, strategy, splits, model, lr_scale)
    rng.seed_everything(cfg.train.seed + 1_000_003 * strategy.rank)  # dropout/augmentation differ per rank
    trainer.flops_per_sample = _flops_per_sample(cfg, splits.spec, own.model if own.given else None)
    trainer.peak_tflops, peak_source = peaks.resolve(
        cfg.log.peak_tflops, strategy.device, trainer.dtype, cfg.train.tf32
    )
    return Built(trainer, splits, n_params, transferred, peak_source, own.names(cfg))


def _finished_already(out: Path, trainer: Trainer, strategy) -> dict | None:
    if not strategy.is_main:
        return None
    print(f"{out} finished at step {trainer.step} of {trainer.total_steps}; nothing to resume", flush=True)
    done = out / "summary.json"
    return json.loads(done.read_text()) if done.is_file() else {"run_dir": str(out), "steps": trainer.step}


def _introduction(cfg: config.Config, strategy, built: Built, out: Path, resumed) -> list[str]:
    """What the run says before its first step."""
    tr, moved = built.trainer, built.transferred
    lines = [f"resumed from {resumed} at step {tr.step}"] if resumed else []
    lines.append(
        f"training {built.names[0]} ({built.parameters:,} parameters) on {built.names[1]} for {tr.total_steps} steps "
        f"on {strategy.world_size} x {strategy.device} ({strategy.name}), precision {tr.dtype or 'fp32'}, "
        f"run dir {out}"
    )
    if built.splits.test_source:
        lines.append(f"note: test split = {built.splits.test_source}")
    if moved.get("weights") or moved["frozen_parameters"]:
        lines.append(
            f"transfer: weights {moved.get('weights', '(none: random)')}, head '{moved['head']}' "
            f"{'kept' if cfg.transfer.head == 'keep' else 'new'}, freeze {moved['freeze']}: "
            f"{moved['frozen_parameters']:,} frozen, {moved['trainable_parameters']:,} trained"
        )
    if tr.flops_per_sample:
        lines.append(f"model FLOPs per sample (forward + backward): {tr.flops_per_sample / 1e9:.4g} GFLOP; "
                     f"MFU against {tr.peak_tflops or '-'} TFLOP/s: {built.peak_source}")  # fmt: skip
    if cluster.restart_count():
        lines.append(f"Slurm restart {cluster.restart_count()} of job {cluster.job_id()}")
    return lines


def _summary(cfg, strategy, built: Built, out: Path, resumed, t0: float, rates: dict, checked, results, ckpts) -> dict:
    tr = built.trainer
    return {
        "run_dir": str(out),
        "model": built.names[0],
        "data": built.names[1],
        "parameters": built.parameters,
        "steps": tr.total_steps,
        "epochs": round(tr.epoch, 4),
        "device": str(strategy.device),
        "strategy": strategy.name,
        "precision": str(tr.dtype or "fp32").replace("torch.", ""),
        "world_size": strategy.world_size,
        "global_batch_size": cfg.data.batch_size * cfg.train.grad_accum * strategy.world_size,
        "resumed_from": str(resumed) if resumed else None,
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "throughput": rates,  # medians over log windows
        "mem_peak_gib": tr.mem_peak_gib,  # the largest peak of any rank (CUDA allocator, or resident set on the CPU)
        "preflight": checked,
        "transfer": built.transferred,
        "val": {k: v for k, v in results["val"].items() if k not in ("split", "step")},
        "test": {k: v for k, v in results["test"].items() if k not in ("split", "step")},
        "test_source": built.splits.test_source,  # None: a held-out split of its own
        "checkpoint": str(ckpts.latest()),
        "checkpoint_error": tr.checkpoint_error,
        **tr.stragglers.summary(),  # stragglers named, and a per-node table
    }
