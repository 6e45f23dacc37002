"""The reference for `hpc-dl bench gemm`: a plain torch.matmul loop on one shape, timed with
device events around back-to-back products (what cuBLAS delivers with nothing of hpc_dl's
in between). The median over repeats; random normal data, as bench gemm uses.

  python benchmarks/gpu/matmul.py --size 8192 --dtype bf16 --out matmul.json
"""

import argparse
import json
import statistics
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192, help="m = k = n")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--iters", type=int, default=20, help="back-to-back products per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device, n = torch.device(args.device), args.size
    torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"
    a = torch.randn(n, n, device=device, dtype=DTYPES[args.dtype])
    b = torch.randn(n, n, device=device, dtype=DTYPES[args.dtype])
    for _ in range(3):  # warm-up: cuBLAS heuristics, clocks
        torch.matmul(a, b)
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                torch.matmul(a, b)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / args.iters)
        else:
            t = time.perf_counter()
            for _ in range(args.iters):
                torch.matmul(a, b)
            times.append((time.perf_counter() - t) / args.iters)
    seconds = statistics.median(times)
    result = {"dtype": args.dtype, "m": n, "k": n, "n": n, "iters": args.iters, "repeats": args.repeats,
              "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
