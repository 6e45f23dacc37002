"""Progress on the console: a live bar on a terminal, plain lines in log files.

Slurm writes stdout to a file, where a bar's carriage returns become one huge
line; there a line every ``log.every`` steps is what a user can ``tail -f``.
"""

import sys
import time

from tqdm import tqdm

# What a console line shows; metrics.jsonl has everything.
SHOWN = ("epoch", "loss", "accuracy", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu", "step_s", "samples")


class Progress:
    def __init__(self, total: int, start: int, mode: str, enabled: bool = True):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode if enabled else "off"
        self.total, self.start, self.t0 = total, start, time.perf_counter()
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True) if self.mode == "bar" else None

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, record: dict) -> None:
        """Show a train or eval record."""
        fields = {k: v for k, v in record.items() if k in SHOWN}
        if self.bar is not None and record["split"] == "train":
            self.bar.set_postfix({k: _fmt(v) for k, v in fields.items() if k in ("loss", "lr", "samples_per_s")})
        elif self.mode != "off":
            self.write(f"{record['split']:<5} step {record['step']}/{self.total} " + self._eta(record) + " ".join(
                f"| {k} {_fmt(v)}" for k, v in fields.items()))  # fmt: skip

    def _eta(self, record: dict) -> str:
        done = record["step"] - self.start
        if record["split"] != "train" or done <= 0:
            return ""
        left = (time.perf_counter() - self.t0) / done * (self.total - record["step"])
        return f"| eta {int(left // 60)}:{int(left % 60):02d} "

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stdout)
        elif self.mode != "off":
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)
