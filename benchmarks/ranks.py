"""What the GPT benchmarks on CPU ranks share (``strategy_memory.py``, ``checkpoint_save.py``): the
GPT they train, starting a script's worker on 1 rank (one plain process: the single strategy, or a
distributed strategy on a world of one) or on N ranks (torchrun, gloo), collecting the JSON each
rank wrote, and medians with ranges.

Every child gets OMP_NUM_THREADS=1 (one compute thread per rank: on a 2-core machine two ranks
fill it, and 1 and 2 ranks do the same work per rank) and W&B disabled.
"""

import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The GPT of hpc_dl/configs/synthetic_gpt.yaml, shrunk to fit a 2-core CPU: 6 blocks of width 512
# and a vocabulary of 8192 (tied embedding) make 23.1M parameters (fp32 AdamW: 16 bytes each, 352
# MiB); 2 sequences of 64 tokens per rank per step keep activations small next to that.
CONFIG = "synthetic_gpt"
GPT = [
    "model.n_layer=6", "model.n_head=8", "model.n_embd=512",
    "data.num_classes=8192", "data.block_size=64", "data.samples=16", "data.batch_size=2",
    "data.eval_batch_size=8", "data.on_device=true",
    "optim.name=adamw", "optim.warmup_steps=0", "train.precision=fp32", "train.device=cpu",
    "train.eval_every=0", "log.every=1000000", "log.wandb=false", "log.plots=false",
    "log.utilisation=false", "log.progress=off", "dist.preflight=false",
]  # fmt: skip


def child_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    return env


def launch(script: Path, nproc: int, args: list[str], timeout_s: float) -> tuple[list[dict], dict]:
    """Run ``script --worker ARGS --results DIR`` on ``nproc`` ranks: one plain process for 1, torchrun
    (standalone, gloo) for more. Returns (each rank's JSON, in rank order; how it went: exit code, wall
    seconds, the end of its stderr). A failed or hung run returns what ranks wrote and its error."""
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as tmp:
        head = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]  # fmt: skip
        argv = [*head, str(script), "--worker", *args, "--results", tmp]
        start = time.perf_counter()
        code, text = _run(argv, timeout_s)
        wall = time.perf_counter() - start
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"), key=_rank_of)]
    how = {"exit": code, "wall_s": round(wall, 2)}
    if code != 0 or len(ranks) != nproc:
        how["error_tail"] = _error_tail(text)
    return ranks, how


def _run(argv: list[str], timeout_s: float) -> tuple[int | str, str]:
    """(exit code or 'timeout', everything it printed); lines starting 'bench: ' are shown as they come.
    Past ``timeout_s`` the whole process group is killed (torchrun and its workers)."""
    lines: list[str] = []
    fired: list[bool] = []
    proc = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip

    def kill() -> None:
        fired.append(True)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("bench: "):
                print(line[7:].rstrip(), file=sys.stderr, flush=True)
        proc.wait()
    finally:
        timer.cancel()
    return ("timeout" if fired else proc.returncode), "".join(lines)


def _rank_of(path: Path) -> int:
    return int(path.stem.removeprefix("rank"))


def _error_tail(text: str, lines: int = 12) -> str:
    """What a failed run said: the end of the first traceback (a rank's own, not torchrun's summary
    after it) and its exception line; else the last lines (DeepSpeed and torchrun talk a lot)."""
    kept = [ln for ln in text.splitlines() if ln.strip() and "[WARNING]" not in ln and "[INFO]" not in ln]
    error = re.compile(r"^(\[rank\d+\]:)?\s*[\w.]+(Error|Exception|Interrupt|Exit)\b")
    for i, line in enumerate(kept):
        if line.lstrip().startswith("Traceback") or "Traceback (most recent call last)" in line:
            end = next((j for j in range(i + 1, len(kept)) if error.match(kept[j])), None)
            if end is not None:
                return "\n".join(kept[max(i, end - lines + 1) : end + 1])
    return "\n".join(kept[-lines:])


def write_rank(results: str, rank: int, data: dict) -> None:
    path = Path(results) / f"rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def keep_strategy() -> dict:
    """``train()`` builds its strategy inside and does not return it; wrap the builder it calls
    (``hpc_dl.distributed.strategy.build``, looked up at call time) so that the benchmark reaches the
    live model, optimizer and engine: ``kept['strategy']`` after the next ``train()`` built one.
    Call it once per process."""
    from hpc_dl.distributed import strategy as strategies

    kept: dict = {}
    original = strategies.build

    def build(cfg):
        kept["strategy"] = original(cfg)
        return kept["strategy"]

    strategies.build = build
    return kept


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def intervals(stamps: dict) -> dict[int, float]:
    """step -> seconds from the end of the step before to the end of this one (``stamps``: step -> clock,
    steps as ints or, read back from JSON, strings)."""
    at = {int(s): t for s, t in stamps.items()}
    return {s: at[s] - at[s - 1] for s in sorted(at) if s - 1 in at}


def spread(values: list[float], digits: int = 4) -> dict | None:
    """Median and range of some measurements (None for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}  # fmt: skip


def machine() -> dict:
    """hpc_dl's manifest plus what these benchmarks depend on: memory, CPU model, DeepSpeed."""
    import importlib.metadata

    from hpc_dl.telemetry import manifest

    out = manifest.environment()
    try:
        out["memory_total_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")]  # fmt: skip
        out["cpu_model"] = models[0] if models else None
    except (OSError, ValueError):
        pass
    try:
        out["deepspeed"] = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        out["deepspeed"] = None
    out["child_env"] = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return out


def report(result: dict, table: str, out: Path | None) -> int:
    """Print the Markdown table; write the JSON result when asked."""
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
