"""Time from process start to the first training step: `hpc-dl train` (the embedded default job,
CNN on digits, CPU) against a minimal PyTorch script doing the same work (load the digits, build the
same CNN, one AdamW step), and the login-node commands (`--help`, `config`) that should not pay
for torch at all.

Each command runs as a fresh process; the clock starts before the process is spawned and stops when
its first step is reported on stdout (`train step 1/` with log.every=1, or the script's `step 1`),
or when a login-node command exits. Rounds alternate the order so drift on a shared machine hits every
command; the result is the median per command over the rounds, with the range, and the machine's manifest.

    .venv/bin/python benchmarks/startup.py --rounds 7 --out benchmarks/results/startup_cpu.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIMAL = r"""
import torch
from sklearn.datasets import load_digits
from torch import nn

x, y = load_digits(return_X_y=True)
x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.tensor(y)
def block(c, o):
    return [nn.Conv2d(c, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
model = nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(inplace=True),
                      nn.Dropout(0.25), nn.Linear(128, 10))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
perm = torch.randperm(len(x))[:64]
loss = nn.functional.cross_entropy(model(x[perm]), y[perm])
loss.backward()
opt.step()
print("step 1", flush=True)
"""


def commands(hpc_dl: str, folder: Path) -> dict[str, tuple[list[str], str | None]]:
    """name -> (argv, the stdout line prefix that marks the first step; None: until exit)."""
    train = [hpc_dl, "train", "log.every=1", "log.progress=plain", "train.steps=2", "train.eval_every=0",
             "log.plots=false"]  # fmt: skip
    return {
        "minimal PyTorch script": ([sys.executable, "-c", MINIMAL], "step 1"),
        "hpc-dl train": ([*train, "log.wandb=false", "--run-dir", str(folder / "a")], "train step 1/"),
        "hpc-dl train, W&B offline": ([*train, "log.wandb=true", "--run-dir", str(folder / "b")], "train step 1/"),
        "hpc-dl --help": ([hpc_dl, "--help"], None),
        "hpc-dl config": ([hpc_dl, "config"], None),
    }


def time_one(argv: list[str], marker: str | None, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    seen = None
    for line in proc.stdout:
        if marker and seen is None and line.startswith(marker):
            seen = time.perf_counter() - start
    proc.wait()
    if proc.returncode != 0 or (marker and seen is None):
        raise SystemExit(f"{argv[:3]} failed (exit {proc.returncode}) or never reported its first step")
    return seen if marker else time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hpc-dl", default=str(Path(sys.executable).with_name("hpc-dl")))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(args.hpc_dl, Path(tmp))
        names = list(cmds)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for sub in Path(tmp).iterdir():  # a fresh run directory every time
                    subprocess.run(["rm", "-rf", str(sub)], check=True)
                times.setdefault(name, []).append(time_one(*cmds[name], env))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names),
                  file=sys.stderr, flush=True)  # fmt: skip
    base = statistics.median(times["minimal PyTorch script"])
    result = {
        "benchmark": "startup",
        "what": "seconds from spawning the process to its first training step (or to exit)",
        "median_s": {n: round(statistics.median(t), 3) for n, t in times.items()},
        "range_s": {n: [round(min(t), 3), round(max(t), 3)] for n, t in times.items()},
        "over_minimal_s": {n: round(statistics.median(t) - base, 3) for n, t in times.items() if "train" in n},
        "rounds_s": {n: [round(v, 3) for v in t] for n, t in times.items()},
    }
    from hpc_dl.telemetry import manifest

    result["manifest"] = manifest.environment()
    print(json.dumps({k: v for k, v in result.items() if k not in ("rounds_s", "manifest")}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
