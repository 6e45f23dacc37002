"""An optional torch.profiler window: N steps traced after M warm-up steps, on every rank.

Each rank writes ``<run>/profile/rank<r>.<time>.pt.trace.json`` (a Chrome trace: open it
in https://ui.perfetto.dev or ``tensorboard --logdir <run>/profile``) and a table of the
most expensive operators, ``rank<r>_ops.txt``. Per-rank traces are the point: a slow
rank shows up as the one whose all-reduce waits are short.
"""

import contextlib
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler


@contextlib.contextmanager
def window(steps: int, warmup: int, out: Path, rank: int, device: torch.device):
    """Yields a function to call after every optimizer step (a no-op when ``steps`` is 0)."""
    if steps <= 0:
        yield lambda: None
        return
    out.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    written = []

    def on_ready(prof):
        tensorboard_trace_handler(str(out), worker_name=f"rank{rank}")(prof)
        table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=25
        )
        (out / f"rank{rank}_ops.txt").write_text(table + "\n")
        written.append(True)

    # The last warm-up step runs under the profiler with its results dropped (the profiler's own warm-up).
    plan = schedule(wait=max(warmup - 1, 0), warmup=min(warmup, 1), active=steps, repeat=1)
    with profile(activities=activities, schedule=plan, on_trace_ready=on_ready, record_shapes=True) as prof:
        yield prof.step
    if not written and rank == 0:
        print(f"warning: the run ended before the profiler window (steps {warmup + 1}-{warmup + steps}); no trace")
