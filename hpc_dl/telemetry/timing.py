"""Where a step's time goes: waiting for data, forward + backward, optimizer step, other.

The loop marks phase boundaries. On GPUs each mark records a CUDA event on the
current stream, so asynchronous kernels are charged to the phase that launched
them; on CPUs marks read the host clock. Consecutive marks tile the window
without gaps, so the phases add up to the step time by construction. Events are
only read when a window is logged, where the loop synchronises anyway.

With DDP, gradient all-reduce runs inside backward (overlapped with it); a comm
hook times each bucket's all-reduce, reported as ``comm_s`` beside the phases.
"""

import statistics
import time

import torch

PHASES = ("data", "compute", "optimizer", "other")


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self.marks: list[tuple[str, object]] = []  # (phase that just ended, event or time)
        self.comm = 0.0
        self._origin = self._now()

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, phase: str) -> None:
        """The phase ``phase`` ends now (and the next one begins)."""
        self.marks.append((phase, self._now()))

    def totals(self) -> dict[str, float]:
        """Seconds per phase since the last reset (synchronises on GPUs)."""
        out = dict.fromkeys(PHASES, 0.0)
        previous = self._origin
        for phase, t in self.marks:
            out[phase] += previous.elapsed_time(t) / 1e3 if self.cuda else t - previous
            previous = t
        return out


def timed_allreduce_hook(timer: StepTimer, before=lambda buffer: None):
    """A DDP comm hook: the default all-reduce, with the time from launch to completion added
    to ``timer.comm`` (host clock: the all-reduce overlaps with backward). ``before(buffer)`` sees
    this rank's own bucket of gradients before it is reduced."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(process_group, bucket):
        before(bucket.buffer())
        start = time.perf_counter()
        future = default_hooks.allreduce_hook(process_group, bucket)

        def done(fut):
            timer.comm += time.perf_counter() - start
            return fut.value()[0] if isinstance(fut.value(), list) else fut.value()

        return future.then(done)

    return hook


def bus_factor(op: str, n: int) -> float:
    """busbw / algbw for ``op`` on ``n`` ranks, as nccl-tests defines it: the bandwidth each link
    carries, comparable across rank counts (an all-reduce moves 2(n-1)/n of the buffer per rank)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    raise ValueError(f"unknown collective {op!r}; choose from all_reduce, all_gather, reduce_scatter")


def seconds_per_call(fn, device: torch.device, repeats: int, warmup: int = 2, calls: int = 1) -> float:
    """Median over ``repeats`` of the mean seconds of ``calls`` back-to-back ``fn()``, after
    ``warmup`` calls: CUDA events on a GPU (the device's time, not the launch's), else perf_counter."""
    for _ in range(warmup):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    runs = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter() - t) / calls)
    return statistics.median(runs)
