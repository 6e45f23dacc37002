"""Dense peak throughput per GPU model and dtype, in TFLOP/s, from NVIDIA's data sheets.

Dense figures only: the data sheets' headline tensor numbers (e.g. 1979 for H100 SXM
bf16) assume 2:4 structured sparsity, which training does not use. Dividing by them
halves the MFU. ``tf32`` is the tensor-core rate for fp32 matmuls with TF32 on;
``fp32`` the plain CUDA-core rate.
"""

import re

PEAKS = {
    # name: {dtype: dense TFLOP/s}
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}

# How CUDA names them (torch.cuda.get_device_name), most specific first.
_PATTERNS = [
    (r"H200", "H200"),
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIe", "H100 PCIe"),
    (r"H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"A100", "A100"),
]


def gpu_model(device_name: str) -> str | None:
    """The table row for a CUDA device name, or None when the GPU is not in the table."""
    for pattern, row in _PATTERNS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return row
    return None


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak for this device and compute dtype (bf16, fp16, tf32, fp32); None if unknown."""
    row = gpu_model(device_name)
    return PEAKS[row].get(dtype) if row else None


def mfu(flops_per_step: float, step_seconds: float, devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s / (devices x peak FLOP/s)."""
    if not peak or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / (devices * peak * 1e12)


def resolve(override: float | None, device, autocast_dtype, tf32: bool) -> tuple[float | None, str]:
    """The peak MFU divides by, and where it came from (logged with every MFU)."""
    if override:
        return override, "log.peak_tflops"
    if device.type != "cuda":
        return None, "no peak for CPUs (set log.peak_tflops to get an MFU)"
    import torch

    name = torch.cuda.get_device_name(device)
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast_dtype, "tf32" if tf32 else "fp32")
    peak = peak_tflops(name, dtype)
    if peak is None:
        return None, f"unknown GPU '{name}': no MFU (set log.peak_tflops)"
    return peak, f"{gpu_model(name)} dense {dtype}"
