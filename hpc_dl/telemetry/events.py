"""events.jsonl: how a run went, segment by segment. Each start (the first, a resume, a Slurm
restart) and each end (completed, stopped for a requeue, failed with its message) is one line,
appended and flushed by rank 0, so a job killed without a word leaves a start with no end.
``hpc-dl report`` tells the run's story from it."""

import datetime
import json
from pathlib import Path

from hpc_dl.telemetry import metrics

NAME = "events.jsonl"
OUTCOMES = ("completed", "stopped", "failed")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Events:
    """One segment's start and end, written by rank 0 only."""

    def __init__(self):
        self.path, self.step, self.ended = None, lambda: None, False  # nothing is written before start()

    def _append(self, event: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({**event, "time": _now()}) + "\n")

    def start(self, out: Path, main: bool, position, world_size: int, hosts: list[str], job_id, restart: int,
              resumed_from) -> None:  # fmt: skip
        """``position()``: the step now (read again when the segment ends)."""
        self.path, self.step = (Path(out) / NAME if main else None), position
        step = position()
        self._append({"event": "start", "step": step, "world_size": world_size, "hosts": sorted(set(hosts)),
                      "job_id": job_id, "restart": restart, "resumed_from": resumed_from})  # fmt: skip

    def end(self, outcome: str, message: str | None = None) -> None:
        if self.ended or self.path is None:  # the first end is the true one (not an error while stopping)
            return
        self.ended = True
        self._append({"event": "end", "step": self.step(), "outcome": outcome, "message": message})


def read(run_dir: Path) -> list[dict]:
    """The events, skipping a line cut short by a crash; [] when the run has none."""
    path = Path(run_dir) / NAME
    return [e for e in metrics.read(path) if isinstance(e, dict)] if path.is_file() else []
