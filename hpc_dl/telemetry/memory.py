"""Memory: each rank's peak so far (the CUDA allocator's on a GPU, the resident set on the CPU),
and what an out-of-memory error says and leaves (on a GPU, a snapshot of the allocator that
PyTorch's viewer, https://pytorch.org/memory_viz, opens)."""

import resource
from pathlib import Path

import torch

GIB = 2**30


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / GIB, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)  # KiB on Linux


def capacity(device: torch.device) -> str:
    """What the peak is measured against, for a message: the GPU's memory, or a `ulimit -v`."""
    if device.type == "cuda":
        return f" of {torch.cuda.get_device_properties(device).total_memory / GIB:.1f} GiB"
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return ""
    return f", under an address-space limit of {limit / GIB:.1f} GiB (ulimit -v)"


def is_oom(error: BaseException) -> bool:
    """torch's OutOfMemoryError on a GPU; the CPU allocator's RuntimeError on the host."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def snapshot(device: torch.device, folder: Path, rank: int) -> Path | None:
    """The allocator's segments and blocks now (GPU only), for the memory viewer; None on the CPU
    or when it cannot be written (the error message must still come out)."""
    if device.type != "cuda":
        return None
    path = Path(folder) / f"rank{rank}_oom.pickle"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(path))
    except Exception:  # noqa: BLE001 - the report matters more than the snapshot
        return None
    return path
