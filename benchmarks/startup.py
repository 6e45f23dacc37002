"""Time from process start to the first training step: `hpc-dl train` (the embedded default job,
CNN on digits, CPU) against a minimal PyTorch script doing the same work (load the digits, build the
same CNN, one AdamW step), and the login-node commands (`--help`, `config`) that should not pay
for torch at all.

Each command runs as a fresh process; the clock starts before the process is spawned and stops when
its first step is reported on stdout (`train step 1/` with log.every=1, or the script's `step 1`),
or when a login-node command exits. The time to exit of the 2-step jobs is recorded too: W&B starts on a
thread after the first step, so its cost moves out of the start-up and shows there instead.
Rounds alternate the order so drift on a shared machine hits every
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


def time_one(argv: list[str], marker: str | None, env: dict) -> tuple[float, float]:
    """(seconds to the marker line, or to exit without one; seconds to exit)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    seen = None
    for line in proc.stdout:
        if marker and seen is None and line.startswith(marker):
            seen = time.perf_counter() - start
    proc.wait()
    if proc.returncode != 0 or (marker and seen is None):
        raise SystemExit(f"{argv[:3]} failed (exit {proc.returncode}) or never reported its first step")
    done = time.perf_counter() - start
    return (seen if marker else done), done


def summarise(times: dict[str, list[float]], exits: dict[str, list[float]]) -> dict:
    """Medians and ranges per command; against the minimal script, the median of the per-round
    differences (each round runs both on the same machine state, so drift cancels) with their range."""
    base = times["minimal PyTorch script"]
    paired = {n: sorted(a - b for a, b in zip(t, base)) for n, t in times.items() if "train" in n}
    return {
        "benchmark": "startup",
        "what": "seconds from spawning the process to its first training step (or to exit)",
        "median_s": {n: round(statistics.median(t), 3) for n, t in times.items()},
        "range_s": {n: [round(min(t), 3), round(max(t), 3)] for n, t in times.items()},
        "over_minimal_s": {n: round(statistics.median(d), 3) for n, d in paired.items()},
        "over_minimal_range_s": {n: [round(d[0], 3), round(d[-1], 3)] for n, d in paired.items()},
        "exit_median_s": {n: round(statistics.median(t), 3) for n, t in exits.items() if "train" in n},
        "rounds_s": {n: [round(v, 3) for v in t] for n, t in times.items()},
        "exit_rounds_s": {n: [round(v, 3) for v in t] for n, t in exits.items() if "train" in n},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hpc-dl", default=str(Path(sys.executable).with_name("hpc-dl")))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    times: dict[str, list[float]] = {}
    exits: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(args.hpc_dl, Path(tmp))
        names = list(cmds)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for sub in Path(tmp).iterdir():  # a fresh run directory every time
                    subprocess.run(["rm", "-rf", str(sub)], check=True)
                first, done = time_one(*cmds[name], env)
                times.setdefault(name, []).append(first)
                exits.setdefault(name, []).append(done)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names),
                  file=sys.stderr, flush=True)  # fmt: skip
    result = summarise(times, exits)
    from hpc_dl.telemetry import manifest

    result["manifest"] = manifest.environment()
    print(json.dumps({k: v for k, v in result.items() if k not in ("rounds_s", "exit_rounds_s", "manifest")}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
