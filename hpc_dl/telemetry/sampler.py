"""Per-rank utilisation, sampled by a background thread and summarised per logging window.

GPU (NVML, nvidia-ml-py): SM utilisation, memory used/total, power draw and limit,
temperature, SM clock, throttle reasons. Host (psutil): this process's CPU
utilisation and resident memory, and how many CPUs it may run on (its affinity: what
Slurm's binding left it). Without an NVML library (a CPU machine) the GPU
part says "not available" once and the host part still runs.
"""

import os
import socket
import sys
import threading

import psutil

_NVML_WARNED = False


def _nvml_handle(index: int, announce):
    global _NVML_WARNED
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as e:  # NVMLError_LibraryNotFound on CPU machines, ImportError without the package
        if announce and not _NVML_WARNED:
            announce(f"GPU utilisation: not available ({type(e).__name__}); host CPU and memory are still sampled")
            _NVML_WARNED = True
        return None, None


def usable_cpus() -> int:
    """The CPUs this process may run on: where Slurm binds tasks, fewer than the node has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Sampler:
    def __init__(self, rank: int, gpu_index: int | None, interval_s: float = 1.0, say=None):
        """``gpu_index``: the CUDA device this rank uses, or None on a CPU run. ``say`` prints a
        note (the progress display's writer, so a live bar is not broken by it)."""
        say = say or (lambda message: print(message, file=sys.stderr))
        self.rank, self.interval = rank, interval_s
        self.process = psutil.Process()
        self.process.cpu_percent()  # the first call only starts the measurement
        announce = say if rank == 0 else None
        self.nvml, self.handle = _nvml_handle(gpu_index, announce) if gpu_index is not None else (None, None)
        if gpu_index is None and announce:
            announce("GPU utilisation: not available (a CPU run); host CPU and memory are sampled")
        self.samples: list[dict] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hpc_dl-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            sample = self.sample()
            with self.lock:
                self.samples.append(sample)

    def sample(self) -> dict:
        s = {"cpu_percent": self.process.cpu_percent(), "rss_gib": self.process.memory_info().rss / 2**30}
        if self.handle is not None:
            n, h = self.nvml, self.handle
            memory = n.nvmlDeviceGetMemoryInfo(h)
            s.update(
                gpu_util=n.nvmlDeviceGetUtilizationRates(h).gpu,
                gpu_mem_used_gib=memory.used / 2**30,
                gpu_mem_total_gib=memory.total / 2**30,
                power_w=n.nvmlDeviceGetPowerUsage(h) / 1e3,
                power_limit_w=n.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3,
                temperature_c=n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
                sm_clock_mhz=n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                throttle_reasons=n.nvmlDeviceGetCurrentClocksThrottleReasons(h),
            )
        return s

    def window(self) -> dict:
        """Mean of each quantity over the samples since the last call (max for memory and
        temperature, all throttle reasons OR-ed); one fresh sample if none was taken."""
        with self.lock:
            samples, self.samples = self.samples, []
        samples = samples or [self.sample()]
        out = {"rank": self.rank, "host": socket.gethostname(), "cpus": usable_cpus(), "samples": len(samples)}
        for key in samples[0]:
            values = [x[key] for x in samples]
            if key == "throttle_reasons":
                reasons = 0
                for v in values:
                    reasons |= v
                out[key] = reasons
            elif key.endswith(("_gib", "_c")):
                out[key] = max(values)
            else:
                out[key] = sum(values) / len(values)
        return out

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
