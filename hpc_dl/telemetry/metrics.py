"""metrics.jsonl: one JSON record per line, appended and flushed as the run goes."""

import json
import statistics
from pathlib import Path

from hpc_dl.fileio import write_text
from hpc_dl.telemetry.record import THROUGHPUT, Record


class MetricsFile:
    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            # Records written after the checkpoint we resume from are about to be redone.
            kept = [r for r in read(self.path) if r.get("step", 0) <= resume_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 (open for the whole run)

    def write(self, record: Record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read(path: Path) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a crash
    return records


def throughput(records: list[dict]) -> dict:
    """Median of each throughput and step-time figure over the training windows; the first window (warm-up,
    compilation, first-touch allocation) is left out when there are others."""
    windows = [r for r in records if r.get("split") == "train"]
    windows = windows[1:] if len(windows) > 1 else windows
    out = {}
    for key in THROUGHPUT:
        values = [r[key] for r in windows if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out
