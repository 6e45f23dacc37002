"""Progress on the console: a live bar on a terminal, plain lines in log files.

Slurm writes stdout to a file, where a bar's carriage returns become one huge
line; there a line every ``log.every`` steps is what a user can ``tail -f``.
"""

import shutil
import sys
import time
from html import escape

from tqdm import tqdm

from hpc_dl.telemetry.record import RATES

# What a console line shows; metrics.jsonl has everything.
SHOWN = ("epoch", "loss", "accuracy", "rmse", "r2", "lr", "grad_norm", *RATES, "mfu", "step_s", "samples")
# The live bar: a fixed-width bar, then as many figures as the terminal has room for, most wanted first
# (steps per second only on wide terminals: samples per second says more).
BAR = "{percentage:3.0f}%|{bar:12}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}RATE{postfix}]"
WIDE = 100
BAR_FIGURES = (("loss", "loss {}"), ("samples_per_s", "{} samples/s"), ("mfu", "MFU {}"), ("lr", "lr {}"))


class Progress:
    def __init__(self, total: int, start: int, mode: str, enabled: bool = True):
        if mode == "auto":
            mode = "notebook" if in_notebook() else "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode if enabled else "off"
        self.total, self.start, self.t0 = total, start, time.perf_counter()
        self.cell = NotebookBar(total, start) if self.mode == "notebook" else None
        wide = shutil.get_terminal_size((80, 24)).columns >= WIDE
        form = BAR.replace("RATE", ", {rate_fmt}" if wide else "")
        self.bar = tqdm(total=total, initial=start, unit="step", bar_format=form) if self.mode == "bar" else None

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        elif self.cell is not None:
            self.cell.update(step)

    def log(self, record: dict) -> None:
        """Show a train or eval record."""
        fields = {k: v for k, v in record.items() if k in SHOWN}
        if self.bar is not None and record["split"] == "train":
            self.bar.set_postfix_str(self._figures(fields), refresh=True)
        elif self.cell is not None and record["split"] == "train":
            self.cell.show(" | ".join(f"{k} {_fmt(v)}" for k, v in fields.items()))
        elif self.mode != "off":
            self.write(f"{record['split']:<5} step {record['step']}/{self.total} " + self._eta(record) + " ".join(
                f"| {k} {_fmt(v)}" for k, v in fields.items()))  # fmt: skip

    def _figures(self, fields: dict) -> str:
        """'loss 0.1234, 1,234 samples/s, ...' cut to what fits beside the bar on this terminal."""
        meter = self.bar.format_meter(**{**self.bar.format_dict, "postfix": None})
        room = shutil.get_terminal_size((80, 24)).columns - 3 - len(meter)  # tqdm puts ", " before the figures
        out = ""
        for key, form in BAR_FIGURES:
            if fields.get(key) is not None:
                part = (", " if out else "") + form.format(_fmt(fields[key]))
                if len(out) + len(part) > room:
                    break
                out += part
        return out

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

    def note(self, message: str) -> None:
        """A warning on stderr that does not break the live bar (which tqdm draws on stderr)."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.cell is not None:
            self.cell.update(self.cell.step, force=True)


def in_notebook() -> bool:
    """In a Jupyter kernel, where stderr is no terminal and a terminal bar's escape codes would show."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return shell is not None and "IPKernelApp" in shell.config


class NotebookBar:
    """A progress bar in the notebook cell's output, redrawn in place as HTML (no widgets needed):
    steps, elapsed and remaining time, and the latest training figures."""

    def __init__(self, total: int, start: int):
        from IPython.display import HTML, display

        self.html, self.total, self.start, self.step = HTML, total, start, start
        self.t0, self.drawn, self.figures = time.perf_counter(), 0.0, ""
        self.handle = display(HTML(self._html()), display_id=True)

    def update(self, step: int, force: bool = False) -> None:
        self.step = step
        now = time.perf_counter()
        if force or step >= self.total or now - self.drawn > 0.2:  # a few redraws a second at most
            self.drawn = now
            self.handle.update(self.html(self._html()))

    def show(self, figures: str) -> None:
        self.figures = figures
        self.update(self.step, force=True)

    def _html(self) -> str:
        elapsed = time.perf_counter() - self.t0
        done = self.step - self.start
        left = elapsed / done * (self.total - self.step) if done > 0 else None
        eta = f", {_clock(left)} left" if left is not None and self.step < self.total else ""
        bar = f'<progress value="{self.step}" max="{self.total}" style="width:30em"></progress>'
        figures = f"<br><code>{escape(self.figures)}</code>" if self.figures else ""
        return f"{bar} <code>{self.step}/{self.total} steps, {_clock(elapsed)}{eta}</code>{figures}"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)
