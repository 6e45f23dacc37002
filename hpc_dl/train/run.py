"""One training run from a config: the run directory, resume, and the files it leaves.

Run directory (``log.dir/<run name>``):
  config.yaml     the fully resolved config; ``hpc-dl train config.yaml`` reruns it
  env.json        hpc_dl/torch/CUDA/NCCL versions, device, host, git revision, Slurm
  metrics.jsonl   one record per log step and per evaluation
  summary.json    final validation and test metrics, steps, time, throughput
  loss.png, accuracy.png
  checkpoints/    step_*.pt and the ``latest`` pointer
"""

import datetime
import os
import time
from pathlib import Path

from hpc_dl import config, data, models
from hpc_dl.dist import strategy as strategies
from hpc_dl.errors import UserError
from hpc_dl.fileio import write_json, write_text
from hpc_dl.telemetry import manifest
from hpc_dl.telemetry.metrics import MetricsFile, read
from hpc_dl.telemetry.plots import plot_curves
from hpc_dl.telemetry.progress import Progress
from hpc_dl.train import checkpoint, precision, rng
from hpc_dl.train.checkpoint import CheckpointDir
from hpc_dl.train.trainer import Trainer


def default_run_name(cfg: config.Config) -> str:
    """<data>-<model>-<Slurm job id or local time>: a requeued job finds its own folder again."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and "SLURM_ARRAY_TASK_ID" in os.environ:
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    stamp = f"job{job}" if job else datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.data.name}-{cfg.model.name}-{stamp}"


def run_directory(cfg: config.Config, run_dir: str | None) -> Path:
    if run_dir:
        return Path(run_dir)
    if cfg.log.run_name:
        return Path(cfg.log.dir) / cfg.log.run_name
    base = Path(cfg.log.dir) / default_run_name(cfg)
    path, n = base, 1
    while path.exists() and "SLURM_JOB_ID" not in os.environ:  # two runs started in the same second
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _find_checkpoint(ckpts: CheckpointDir, resume: str | None) -> tuple[Path, dict] | None:
    if resume is None:
        if ckpts.files():
            raise UserError(
                f"{ckpts.path.parent} already holds checkpoints of an earlier run; "
                "pass --resume auto to continue it, or choose another --run-dir / log.run_name"
            )
        return None
    if resume == "auto":
        return ckpts.load_latest()  # None: nothing to resume, start fresh
    path = Path(resume)
    if path.is_dir():  # a run directory or its checkpoints folder
        found = CheckpointDir(path / "checkpoints" if (path / "checkpoints").is_dir() else path, 1).load_latest()
        if found is None:
            raise UserError(f"--resume {resume}: no checkpoint in that folder")
        return found
    return path, checkpoint.load(path)


def train(cfg: config.Config, run_dir: str | None = None, resume: str | None = None) -> dict:
    t0 = time.perf_counter()
    strategy = strategies.build(cfg)
    precision.configure_backends(cfg.train.tf32, cfg.train.deterministic)
    rng.seed_everything(cfg.train.seed)
    splits = data.build(cfg.data)
    model = models.build(cfg.model, splits.spec)
    trainer = Trainer(cfg, strategy, splits, model)

    out = run_directory(cfg, run_dir)
    ckpts = CheckpointDir(out / "checkpoints", cfg.checkpoint.keep_last)
    resumed = _find_checkpoint(ckpts, resume)
    if resumed:
        try:
            trainer.load_state_dict(resumed[1])
        except (KeyError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:300]
            raise UserError(f"checkpoint {resumed[0]} does not fit this run's model/optimizer: {first}") from e

    main = strategy.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", config.to_yaml(cfg))
        write_json(out / "env.json", manifest.environment())
    metrics = MetricsFile(out / "metrics.jsonl", resume_step=trainer.step) if main else None
    progress = Progress(trainer.total_steps, trainer.step, cfg.log.progress, enabled=main)
    if resumed:
        progress.write(f"resumed from {resumed[0]} at step {trainer.step}")
    progress.write(
        f"training {cfg.model.name} ({models.count_parameters(model):,} parameters) on {cfg.data.name} "
        f"for {trainer.total_steps} steps on {strategy.device}, precision {trainer.dtype or 'fp32'}, run dir {out}"
    )
    trainer.observers = [progress.log] + ([metrics.write] if metrics else [])
    try:
        results = trainer.fit(ckpts, on_step=progress.update)
    finally:
        progress.close()
        if metrics:
            metrics.close()
        strategy.close()

    summary = {
        "run_dir": str(out),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "parameters": models.count_parameters(model),
        "steps": trainer.total_steps,
        "epochs": round(trainer.epoch, 4),
        "device": str(strategy.device),
        "precision": str(trainer.dtype or "fp32").replace("torch.", ""),
        "world_size": strategy.world_size,
        "global_batch_size": cfg.data.batch_size * cfg.train.grad_accum * strategy.world_size,
        "resumed_from": str(resumed[0]) if resumed else None,
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "val": {k: v for k, v in results["val"].items() if k not in ("split", "step")},
        "test": {k: v for k, v in results["test"].items() if k not in ("split", "step")},
        "checkpoint": str(ckpts.latest()),
    }
    if main:
        write_json(out / "summary.json", summary)
        if cfg.log.plots:
            plot_curves(read(out / "metrics.jsonl"), out)
    return summary
