"""Weights & Biases: one run per job, created on rank 0, offline unless an API key is configured.

Compute nodes often have no internet, so without a key (or with ``WANDB_MODE=offline``)
the run is written under ``<run dir>/wandb/offline-run-*`` and uploaded later with
``wandb sync``. A requeued job resumes the same W&B run: its id is kept in the run
directory. W&B is a view, never the record: everything logged here is also in
metrics.jsonl, and a W&B failure never stops training.
"""

import importlib.util
import netrc
import os
import statistics
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from hpc_dl.config import Config, to_dict
from hpc_dl.fileio import write_text
from hpc_dl.telemetry.record import FLOP_RATES, RATES, STEP_TIMES

STEP = "step"
SECTIONS = ("train", "val", "perf", "system")  # chart sections, all plotted against the optimizer step
LAST_STEP = "wandb_step"  # the last step logged, so that a resumed segment never logs a step twice


def _has_api_key() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it); never read it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(_base_url()).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def reachable(url: str, timeout_s: float = 3.0) -> bool:
    """Does the W&B server answer within a few seconds? Any HTTP answer counts (even 401/404):
    compute nodes without internet fail here fast instead of stalling wandb.init for a minute."""
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()  # noqa: S310 - the configured W&B server
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def choose_mode(wanted: str) -> tuple[str, str]:
    """(mode, why): WANDB_MODE wins, then log.wandb_mode; 'auto' is online only with an API key."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return ("offline" if env == "dryrun" else env), f"WANDB_MODE={env}"
    if wanted != "auto":
        return wanted, f"log.wandb_mode={wanted}"
    if _has_api_key():
        return "online", "an API key is configured"
    return "offline", "no API key configured"


# The figures of a training record that describe speed, not learning: their own panel section.
PERF = (*RATES, *FLOP_RATES, "peak_tflops", *STEP_TIMES)
RANK_KEYS_SKIPPED = ("rank", "samples", "throttle_reasons")  # identifiers and bit fields, not quantities


def flatten(record: dict) -> dict:
    """A metrics.jsonl record as W&B charts: learning curves under ``train/`` and ``val/``, speed and
    the step-time breakdown under ``perf/``, and each per-rank quantity as its minimum, median and
    maximum across ranks under ``system/`` (three charts whatever the rank count; the per-rank
    detail goes into a table at the end, see ``WandbRun.finish``)."""
    split = record["split"]
    flat = {STEP: record["step"]}
    for key, value in record.items():
        if key == "ranks":
            for name in sorted({k for r in value for k in r if k not in RANK_KEYS_SKIPPED}):
                values = sorted(r[name] for r in value if _number(r.get(name)))
                if values:
                    flat[f"system/{name}_min"], flat[f"system/{name}_max"] = values[0], values[-1]
                    flat[f"system/{name}_median"] = statistics.median(values)
        elif key in ("gpu_util_min", "gpu_util_max", "cpu_percent_min", "cpu_percent_max"):
            continue  # the same figures as system/*
        elif key not in ("split", "step") and _number(value):
            flat[f"{'perf' if split == 'train' and key in PERF else split}/{key}"] = value
    return flat


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class WandbRun:
    """Rank 0's W&B run. ``start`` returns None when W&B is off or not installed.

    Importing wandb and starting its service take seconds (about 2.5 s here, more from a shared
    file system) and, on a thread, would still slow training's own start through the GIL. So the
    start begins with the first record (after the first step is shown) on a thread: records logged
    before the run is up wait in a list and go out, in order, once it is; the thread's messages are
    said on the main thread. ``run`` and ``finish`` wait for the start. A failed start only costs
    the dashboard."""

    def __init__(self, opening: tuple, out: Path, say):
        self._opening, self._starting, self.out, self.say = opening, None, out, say
        self._run, self.mode, self.waiting = None, None, []
        last = out / LAST_STEP
        # W&B drops steps that do not increase; a resumed job redoes the steps after its checkpoint
        self.logged = int(last.read_text()) if last.is_file() and last.read_text().strip().isdigit() else -1
        self.ranks: dict[int, dict] = {}  # per-rank sums over the run, for the table at the end

    @classmethod
    def start(cls, cfg: Config, out: Path, manifest: dict, say=print) -> "WandbRun | None":
        log = cfg.log
        mode, why = choose_mode(log.wandb_mode)
        if mode == "disabled":
            say(f"W&B: disabled ({why})")
            return None
        if importlib.util.find_spec("wandb") is None:
            say("W&B: the wandb package is not installed (pip install wandb); metrics go to metrics.jsonl only")
            return None
        id_file = out / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        write_text(id_file, run_id + "\n")
        slurm = manifest.get("slurm", {})
        run_config = {
            **to_dict(cfg),
            "slurm": {
                "job_id": slurm.get("SLURM_JOB_ID"),
                "array_job_id": slurm.get("SLURM_ARRAY_JOB_ID"),
                "array_task_id": slurm.get("SLURM_ARRAY_TASK_ID"),
                "restart_count": int(slurm.get("SLURM_RESTART_COUNT", 0)),
                "nodelist": slurm.get("SLURM_JOB_NODELIST"),
                "nnodes": slurm.get("SLURM_NNODES"),
            },
            "git": manifest.get("git"),
            "environment": manifest,
        }
        kwargs = dict(
            project=log.wandb_project, entity=log.wandb_entity, group=log.wandb_group, job_type=log.wandb_job_type,
            name=out.name, tags=list(log.wandb_tags) or None, notes=log.wandb_notes, dir=str(out), id=run_id,
            resume="allow", config=run_config,
        )  # fmt: skip
        return cls((mode, why, kwargs), out, say)

    @classmethod
    def _open(cls, mode: str, why: str, kwargs: dict) -> tuple:
        """(run or None, mode, lines to say): on the start thread, so it says nothing itself."""
        import wandb

        if mode == "online" and not reachable(_base_url()):
            mode, why = "offline", f"{_base_url()} did not answer within 3 s"
        lines = []
        try:
            run = cls._init(wandb, mode, kwargs)
        except Exception as e:  # noqa: BLE001 - no network, bad entity, ...: the run goes on
            if mode != "online":
                return None, mode, [f"W&B: could not start ({type(e).__name__}: {e}); metrics go to metrics.jsonl only"]
            lines.append(f"W&B: online start failed ({type(e).__name__}: {e}); logging offline instead")
            mode = "offline"
            wandb.teardown()  # the failed online attempt still holds the run id in W&B's service
            try:
                run = cls._init(wandb, mode, kwargs)
            except Exception as e2:  # noqa: BLE001
                return None, mode, [*lines, f"W&B: could not start offline either ({type(e2).__name__}: {e2})"]
        run.define_metric(STEP)
        for section in SECTIONS:
            run.define_metric(f"{section}/*", step_metric=STEP)
        lines.append(f"W&B: {mode} run {run.id} ({why})" + (f", {run.url}" if mode == "online" and run.url else ""))
        return run, mode, lines

    def _started(self, wait: bool) -> bool:
        """Has the start finished (waiting for it if asked)? Says its lines and sends what waited, once."""
        if self._opening:
            pool = ThreadPoolExecutor(1, thread_name_prefix="wandb-start")
            self._starting, self._opening = pool.submit(self._open, *self._opening), None
            pool.shutdown(wait=False)  # the thread ends with the start
        if self._starting is None:
            return True
        if not wait and not self._starting.done():
            return False
        try:
            self._run, self.mode, lines = self._starting.result()
        except Exception as e:  # noqa: BLE001 - a broken wandb install: the run goes on without it
            self._run = None
            lines = [f"W&B: could not start ({type(e).__name__}: {e}); metrics go to metrics.jsonl only"]
        self._starting = None
        for line in lines:
            self.say(line)
        waiting, self.waiting = self.waiting, []
        for record in waiting:
            self._log(record)
        return True

    @property
    def run(self):
        """The wandb run (waits for the start; None if it failed)."""
        self._started(wait=True)
        return self._run

    @staticmethod
    def _init(wandb, mode: str, kwargs: dict):
        # console="off": progress lines stay ours (Slurm logs); W&B still samples system metrics.
        # x_disable_meta: W&B's own metadata records every SLURM_* variable (free text such as
        # SLURM_JOB_COMMENT included) and the command line; the run's config holds our manifest,
        # which records only named variables.
        settings = wandb.Settings(mode=mode, console="off", init_timeout=30, silent=True, x_disable_meta=True)
        return wandb.init(settings=settings, **kwargs)

    def log(self, record: dict) -> None:
        if self._started(wait=False):
            self._log(record)
        else:
            self.waiting.append(record)

    def _log(self, record: dict) -> None:
        if self._run is None:
            return
        for r in record.get("ranks", []):
            sums = self.ranks.setdefault(r["rank"], {"host": r.get("host"), "windows": 0})
            sums["windows"] += 1
            for k, v in r.items():
                if _number(v) and k not in RANK_KEYS_SKIPPED:
                    sums[k] = sums.get(k, 0.0) + v
        if record["split"] == "test":  # one value per run: a summary, not a one-point chart
            self.run.summary.update({f"test/{k}": v for k, v in record.items() if _number(v) and k != "step"})
            return
        if record["step"] <= self.logged and record["split"] == "train":
            return  # logged by the segment before the resume
        self.run.log(flatten(record))
        if record["split"] == "train":
            self.logged = record["step"]
            (self.out / LAST_STEP).write_text(f"{self.logged}\n")  # no fsync: losing it costs a dropped step

    def finish(
        self, summary: dict | None, images: list[Path], exit_code=0, say=print, preempted=False, section="curves"
    ) -> None:
        """Summary values and the plots (as ``section/<file stem>``), then close the run (exit_code != 0
        marks it failed; ``preempted``: it will resume, as the same W&B run)."""
        if self.run is None:
            return
        import wandb

        try:
            if preempted:
                self.run.mark_preempting()
            if summary:
                final = {f"final/{k}": v for k, v in summary.get("throughput", {}).items() if v is not None}
                for split in ("val", "test"):
                    final.update({f"final/{split}_{k}": v for k, v in summary.get(split, {}).items() if _number(v)})
                final["final/steps"] = summary["steps"]
                final["final/wall_time_s"] = summary["wall_time_s"]
                final["final/stragglers"] = len(summary.get("stragglers", []))
                self.run.summary.update(final)
            media = {f"{section}/{p.stem}": wandb.Image(str(p)) for p in images if p.exists()}
            if self.ranks:  # one row per rank: the means over the run (a chart per rank would not scale)
                keys = sorted({k for sums in self.ranks.values() for k in sums} - {"host", "windows"})
                rows = [[r, sums["host"], *[sums.get(k, 0.0) / sums["windows"] for k in keys]]
                        for r, sums in sorted(self.ranks.items())]  # fmt: skip
                media["system/ranks"] = wandb.Table(columns=["rank", "host", *keys], data=rows)
            nodes = (summary or {}).get("nodes")
            if nodes:  # one row per node: means per step over the run, and windows it held the job back
                keys = ["step_s", "data_s", "own_s", "straggler_windows"]
                rows = [[n["host"], " ".join(map(str, n["ranks"])), *[n[k] for k in keys]] for n in nodes]
                media["system/nodes"] = wandb.Table(columns=["host", "ranks", *keys], data=rows)
            if media:
                self.run.log(media)
            run_dir = Path(self.run.dir).parent  # .../wandb/<offline-run-...>/files
        finally:
            self.run.finish(exit_code=exit_code)
        if self.mode == "offline":
            segments = sorted(run_dir.parent.glob("offline-run-*"))  # one per resumed segment, oldest first
            say(f"W&B: offline run in {run_dir}; upload it with: wandb sync {' '.join(map(str, segments))}")
