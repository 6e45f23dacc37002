"""Everything a run leaves for people to read, behind one context manager: the live progress,
config.yaml and env.json, metrics.jsonl, W&B, the utilisation sampler, the profiler window, and at
the end summary.json, the plots and the W&B summary. Side effects on rank 0 only; the sampler
runs on every rank (its windows are gathered). The W&B run is finished in one place: ``finish``
after a completed run, ``__exit__`` when the run ends by an exception (an exception with
``exit_code`` 75, a checkpointed stop, marks the W&B run as pre-empted: it resumes as the same run)."""

import contextlib
from pathlib import Path

from hpc_dl import config
from hpc_dl.fileio import write_json, write_text
from hpc_dl.telemetry import manifest, profiler
from hpc_dl.telemetry.metrics import MetricsFile, read, throughput
from hpc_dl.telemetry.progress import Progress
from hpc_dl.telemetry.sampler import Sampler
from hpc_dl.telemetry.wandb_run import WandbRun

STOPPED_EXIT = 75  # hpc_dl.training.stop.EXIT_STOPPED (telemetry sits below train)


class RunObserver(contextlib.ExitStack):
    def __init__(self, cfg: config.Config, strategy, out: Path, total_steps: int, step: int):
        super().__init__()
        self.cfg, self.strategy, self.out, self.main = cfg, strategy, out, strategy.is_main
        self.progress = Progress(total_steps, step, cfg.log.progress, enabled=self.main)
        self.say = self.progress.write
        self.dashboard = self.metrics = self.sampler = None
        self.step = step

    def __enter__(self):
        super().__enter__()
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        self.callback(self.progress.close)
        cfg, log = self.cfg, self.cfg.log
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            env = manifest.environment()
            write_text(self.out / "config.yaml", config.to_yaml(cfg))
            write_json(self.out / "env.json", env)
            if log.wandb:
                self.dashboard = WandbRun.start(cfg, self.out, env, say=self.say)
            self.metrics = MetricsFile(self.out / "metrics.jsonl", resume_step=self.step)
            self.callback(self.metrics.close)
        if log.utilisation:
            device = self.strategy.device
            gpu = device.index if device.type == "cuda" else None
            self.sampler = Sampler(self.strategy.rank, gpu, log.sample_interval_s, say=self.progress.note)
            self.callback(self.sampler.close)
        trace = profiler.window(log.profile_steps, log.profile_warmup, self.out / "profile", self.strategy.rank,
                                self.strategy.device)  # fmt: skip
        self.profile_step = self.enter_context(trace)
        return self

    def __exit__(self, kind, error, tb):
        if error is not None and self.dashboard:
            code = getattr(error, "exit_code", 1)
            self.dashboard.finish(None, [], exit_code=code, say=self.say, preempted=code == STOPPED_EXIT)
        return super().__exit__(kind, error, tb)

    @property
    def observers(self) -> list:
        """What the trainer hands each record to (rank 0)."""
        observers = [self.progress.log]
        if self.metrics:
            observers.append(self.metrics.write)
        if self.dashboard:
            observers.append(self.dashboard.log)
        return observers

    def on_step(self, also):
        def step(n: int) -> None:
            self.progress.update(n)
            self.profile_step()
            also(n)

        return step

    def throughput(self) -> dict:
        """Medians over the log windows (rank 0; the metrics file is closed by then)."""
        return throughput(read(self.out / "metrics.jsonl")) if self.main else {}

    def finish(self, summary: dict) -> None:
        """summary.json, the plots and the W&B summary (rank 0), after the run completed."""
        if not self.main:
            return
        write_json(self.out / "summary.json", summary)
        plots = []
        if self.cfg.log.plots:
            from hpc_dl.telemetry.plots import plot_confusion, plot_curves  # matplotlib: loaded only to draw

            plots = plot_curves(read(self.out / "metrics.jsonl"), self.out)
            confusion = plot_confusion(summary.get("test") or {}, self.out)
            plots += [confusion] if confusion else []
        if self.dashboard:
            self.dashboard.finish(summary, plots, say=print)
