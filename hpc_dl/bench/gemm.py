"""Matmul throughput: the achievable peak that MFU can also be measured against.

Square sizes and LLM-shaped ones (tokens x width times width x 3/4 width, as in a
transformer's QKV and MLP), per dtype; warm-up excluded, device events on GPUs,
median of the repeats. On a CPU it measures the CPU.
"""

import datetime
import platform

import torch

import hpc_dl
from hpc_dl.telemetry.timing import seconds_per_call

GPU_SIZES = [(n, n, n) for n in (1024, 2048, 4096, 8192, 16384)] + [
    (16384, 4096, 12288), (16384, 4096, 4096), (16384, 4096, 16384), (16384, 16384, 4096),
]  # fmt: skip
CPU_SIZES = [(n, n, n) for n in (128, 256, 512, 1024)] + [(1024, 512, 1536), (1024, 2048, 512)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}


def _seconds(a, b, repeats: int, warmup: int) -> float:
    return seconds_per_call(lambda: a @ b, a.device, repeats, warmup)


def run(device: torch.device, dtypes: list[str], sizes=None, repeats=10, warmup=3) -> dict:
    sizes = sizes or (GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    rows = []
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    try:
        for name in dtypes:
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            for m, k, n in sizes:
                a = torch.randn(m, k, device=device, dtype=DTYPES[name])
                b = torch.randn(k, n, device=device, dtype=DTYPES[name])
                s = _seconds(a, b, repeats, warmup)
                rows.append({"dtype": name, "m": m, "k": k, "n": n, "seconds": s, "tflops": 2 * m * k * n / s / 1e12})
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    best = {d: max(r["tflops"] for r in rows if r["dtype"] == d) for d in dtypes}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hpc_dl": hpc_dl.__version__,
        "date": datetime.date.today().isoformat(),
        "repeats": repeats,
        "warmup": warmup,
        "statistic": "median",
        "rows": rows,
        "achievable_tflops": best,
    }


def format_table(result: dict) -> str:
    lines = [f"matmul throughput on {result['device']} (median of {result['repeats']}, warm-up excluded)", ""]
    lines.append(f"{'dtype':<6} {'m':>6} {'k':>6} {'n':>6} {'ms':>10} {'TFLOP/s':>9}")
    for r in result["rows"]:
        lines.append(
            f"{r['dtype']:<6} {r['m']:>6} {r['k']:>6} {r['n']:>6} {r['seconds'] * 1e3:>10.3f} {r['tflops']:>9.3f}"
        )
    for dtype, best in result["achievable_tflops"].items():
        lines.append(
            f"achievable {dtype}: {best:.3f} TFLOP/s (use log.achievable_tflops={best:.4g} for MFU against it)"
        )
    return "\n".join(lines)
