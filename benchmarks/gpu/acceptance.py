"""GPU acceptance in one command (issue 19): on one H100/H200, in at most 8 minutes, the
GPU-marked tests and the speed measurements hpc_dl claims, each next to its target, written
to one folder (results.json, results.md, run.log).

  bash benchmarks/gpu/run.sh --out OUT            # on the GPU machine (run.sh sets PYTHONPATH, W&B off)
  bash benchmarks/gpu/run.sh --out OUT --dry-run  # CPU, tiny sizes: every part runs (CI does this)

Parts (each in its own subprocess with a timeout, each with its own time budget; a part that
runs over is killed and the run goes on to the next, saying so in the results):
  tests       pytest -m gpu (every GPU-marked test)
  gemm        hpc-dl bench gemm (bf16, tf32) against a plain torch.matmul loop, and cuBLAS's ~790 TFLOP/s
  gpt         a ~350M GPT (24 x 1024, context 1024, bf16, fused AdamW, SDPA) through hpc-dl train,
              eager, then torch.compile'd with what is left of the budget: tokens/s, MFU
  resnet50    ResNet-50 at 224x224, channels_last, bf16, synthetic data on the device: images/s
  overhead    hpc_dl's trainer against a hand-written loop (benchmarks/trainer_overhead.py)
  loaders     CIFAR-format and ImageFolder data on local disk, loader workers feeding ResNet-50: data wait
  telemetry   telemetry on/off (benchmarks/telemetry_overhead.py) and hpc-dl bench allreduce on one GPU

Training parts read metrics.jsonl as the run goes and stop the run once it has logged the
windows they measure (medians over the windows after the first, as summary.json's are), so
the lease is not spent on the final evaluation and checkpoint. This file uses only the
standard library: it runs, and reports, even where torch does not import.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
PY = sys.executable

# Targets and references (issue 19). Peaks are dense bf16 (hpc_dl/telemetry/peaks.py).
GEMM_REFERENCE_TFLOPS = 790.0  # cuBLAS bf16, 8192^3 on random data, measured on these H200s (device KINDS.md)
RESNET50_A100_AMP = 2470.0  # NVIDIA's published A100 AMP training figure, images/s
TARGETS = {"gpt_mfu": 0.45, "gpt_mfu_goal": 0.50, "resnet50_images_per_s": 3000.0, "gemm_ratio": 0.97,
           "trainer_ratio": 1.02, "data_share": 0.05, "telemetry_ratio": 1.01}  # fmt: skip

# Seconds per part. The GPU total is 8 minutes with a few seconds for the environment and report;
# the dry-run budgets are only a guard against hangs in CI (a busy 2-core machine is slow).
BUDGETS = {
    "gpu": {"tests": 105, "gemm": 30, "gpt": 130, "resnet50": 40, "overhead": 55, "loaders": 60, "telemetry": 50},
    "dry": {"tests": 90, "gemm": 60, "gpt": 120, "resnet50": 60, "overhead": 90, "loaders": 120, "telemetry": 90},
}
TOTAL = {"gpu": 480, "dry": 600}
QUIET = ["log.wandb=false", "log.plots=false", "log.progress=plain", "train.eval_every=0", "checkpoint.every=0",
         "optim.warmup_steps=0"]  # fmt: skip


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    device: list[str]  # extra arguments for the hpc-dl bench commands
    gemm_dtypes: str
    gemm_repeats: list[str]
    matmul: list[str]
    gpt: list[str]
    resnet50: list[str]
    overhead: list[str]
    make_data: list[str]
    cifar: list[str]
    imagefolder: list[str]
    telemetry: list[str]
    allreduce: list[str]
    compile_gpt: bool = True
    every: int = 10  # steps per metrics window
    windows: int = 5  # windows a training part waits for (the first one is not measured)


def _words(text: str) -> list[str]:
    return text.split()


def _resnet50(image: int, batch: int, samples: int) -> list[str]:
    return _words(f"model.name=resnet50 data.name=synthetic_images data.shape=[3,{image},{image}] "
                  f"data.num_classes=1000 data.samples={samples} data.batch_size={batch} "
                  f"data.eval_batch_size={batch} data.on_device=true train.channels_last=true "
                  "optim.name=sgd optim.lr=0.1")  # fmt: skip


def sizes(dry: bool) -> Sizes:
    if not dry:
        workers = max(1, min(14, (os.cpu_count() or 2) - 2))  # a core left for the training process and its sampler
        loader = _words(f"model.name=resnet50 data.num_workers={workers} data.persistent_workers=true "
                        "train.channels_last=true train.precision=bf16 optim.name=sgd optim.lr=0.1")  # fmt: skip
        # The trainer and the hand loop do the same arithmetic: no gradient clipping on either side.
        resnet = [f"--set={s}" for s in _resnet50(224, 128, 256) + ["train.precision=bf16", "train.grad_clip=null"]]
        return Sizes(
            device=[],
            gemm_dtypes="bf16,tf32",
            gemm_repeats=[],
            matmul=_words("--size 8192 --dtype bf16"),
            gpt=_words(
                "model.name=gpt model.n_layer=24 model.n_head=16 model.n_embd=1024 data.name=synthetic_tokens "
                "data.num_classes=50304 data.block_size=1024 data.samples=64 data.batch_size=16 "
                "data.eval_batch_size=16 data.on_device=true train.precision=bf16 optim.name=adamw optim.lr=6e-4 "
                "optim.betas=[0.9,0.95]"
            ),  # fmt: skip
            resnet50=[*_resnet50(224, 256, 512), "train.precision=bf16"],
            overhead=[*_words("--pairs 3 --steps 50 --warmup 10 --batch 128"), *resnet],
            # One epoch covers the measured steps: no restart of the loader inside them.
            make_data=_words("--cifar-per-batch 3200 --images-per-class 680"),
            cifar=[*loader, "model.small_input=true", "data.name=cifar10", "data.batch_size=256"],
            imagefolder=[*loader, "data.name=imagefolder", "data.image_size=224", "data.batch_size=128"],
            telemetry=[*_words("--pairs 2 --steps 40 --warmup 10 --batch 128"), *resnet, "--set=log.wandb=false"],
            allreduce=_words("--max-bytes 256M"),
        )
    # Tiny and on the CPU: every code path of the GPU run, none of its numbers. An assumed
    # 1 TFLOP/s peak gives the CPU an MFU, so that field is produced too. The overhead parts
    # keep their scripts' own small model (CIFAR ResNet-20) to spare CI's cores.
    cpu = "train.device=cpu"
    loader = ["model.name=resnet20", "data.num_workers=1", "data.persistent_workers=true", cpu]
    overhead = _words(f"--pairs 1 --steps 3 --warmup 1 --batch 4 --set={cpu} --set=train.grad_clip=null "
                      "--set=data.samples=16")  # fmt: skip
    return Sizes(
        device=["--device", "cpu"],
        gemm_dtypes="fp32",
        gemm_repeats=["--repeats", "2"],
        matmul=_words("--size 512 --dtype fp32 --device cpu --iters 3 --repeats 2"),
        gpt=_words(
            "model.name=gpt model.n_layer=2 model.n_head=2 model.n_embd=32 data.name=synthetic_tokens "
            "data.num_classes=64 data.block_size=16 data.samples=32 data.batch_size=4 data.eval_batch_size=4 "
            f"data.on_device=true optim.name=adamw log.peak_tflops=1 {cpu}"
        ),  # fmt: skip
        resnet50=[*_resnet50(64, 2, 4), "data.num_classes=10", cpu],
        overhead=overhead,
        make_data=_words("--cifar-per-batch 20 --images-per-class 2 --width 40 --height 30"),
        cifar=[*loader, "data.name=cifar10", "data.batch_size=8"],
        imagefolder=[*loader, "data.name=imagefolder", "data.image_size=32", "data.batch_size=4"],
        telemetry=[*overhead, "--set=log.wandb=false"],
        allreduce=_words("--device cpu --max-bytes 64K --repeats 2"),
        compile_gpt=False,  # Inductor's C++ build takes minutes on a small CPU; the GPU run tries it
        every=1,
        windows=3,
    )


# ----------------------------------------------------------------------------- running
@dataclass
class Command:
    argv: list[str]
    log: Path | None = None  # the command's whole output
    status: str = "not run"  # ok, failed, over budget, stopped (measured, then ended early)
    rc: int | None = None
    elapsed_s: float = 0.0
    log_tail: list[str] = field(default_factory=list)


@dataclass
class Part:
    id: str
    title: str
    budget_s: float
    status: str = "not run"
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)
    targets: list[dict] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)

    def target(self, what: str, measured, op: str, goal, note: str = "") -> None:
        """One target next to its measurement; ``op`` '>=', '<=', '==' or 'ref' (a reference, not pass/fail)."""
        checks = {">=": lambda m: m >= goal, "<=": lambda m: m <= goal, "==": lambda m: m == goal}
        met = None if measured is None or op == "ref" else bool(checks[op](measured))
        self.targets.append({"what": what, "measured": measured, "target": f"{op} {goal}", "met": met, "note": note})


class Runner:
    def __init__(self, out: Path, work: Path, total_s: float, env: dict):
        self.out, self.work, self.env = out, work, env
        self.deadline = time.monotonic() + total_s
        self.log = open(out / "run.log", "a")  # noqa: SIM115 (open for the whole run)
        self.part: Part | None = None
        self.part_deadline = 0.0

    def left(self) -> float:
        return min(self.part_deadline, self.deadline) - time.monotonic()

    def say(self, text: str) -> None:
        line = f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run(self, argv: list[str], cap: float | None = None, stop_when=None, ok=(0,)) -> Command:
        """Run ``argv`` (at most ``cap`` seconds, never past the part's budget) in its own process group;
        ``stop_when()`` true ends it early as measured. Over budget, the whole group is killed."""
        cmd = Command([str(a) for a in argv])
        self.part.commands.append(cmd)
        timeout = self.left() if cap is None else min(cap, self.left())
        if timeout < 1:
            cmd.status = "over budget"
            self.part.notes.append(f"not started, no time left: {' '.join(cmd.argv[:6])} ...")
            return cmd
        cmd.log = log_path = self.work / "logs" / f"{self.part.id}-{len(self.part.commands)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.say(f"$ {' '.join(cmd.argv)}   (timeout {timeout:.0f} s)")
        start = time.monotonic()
        with open(log_path, "w") as log:
            # A new session: the kill reaches loader workers and compile workers too.
            proc = subprocess.Popen(cmd.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            while True:
                try:
                    cmd.rc = proc.wait(timeout=0.5)
                    cmd.status = "ok" if cmd.rc in ok else "failed"
                    break
                except subprocess.TimeoutExpired:
                    if stop_when is not None and stop_when():
                        cmd.status = "stopped"
                    elif time.monotonic() - start > timeout:
                        cmd.status = "over budget"
                    else:
                        continue
                    os.killpg(proc.pid, signal.SIGKILL)
                    cmd.rc = proc.wait()
                    break
        cmd.elapsed_s = round(time.monotonic() - start, 2)
        text = log_path.read_text(errors="replace")
        self.log.write(text if text.endswith("\n") or not text else text + "\n")
        cmd.log_tail = text.splitlines()[-25:]
        self.say(f"  -> {cmd.status} (rc {cmd.rc}) after {cmd.elapsed_s:.1f} s")
        if cmd.status == "over budget":
            self.part.notes.append(f"ran over its time ({timeout:.0f} s): killed, going on to the next part")
        return cmd


# ------------------------------------------------------------------------ helpers
def _train_windows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written
        if record.get("split") == "train":
            records.append(record)
    return records


def _medians(windows: list[dict]) -> dict:
    """Median of each figure over the windows after the first (warm-up, compilation), as summary.json has."""
    measured = windows[1:] if len(windows) > 1 else windows
    keys = ("samples_per_s", "tokens_per_s", "mfu", "tflops_per_device", "peak_tflops", "step_s", "data_s",
            "compute_s", "optimizer_s", "other_s", "gpu_util_min", "loss")  # fmt: skip
    out = {"windows": len(windows), "windows_measured": len(measured)}
    for key in keys:
        values = [w[key] for w in measured if w.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def _log(cmd: Command) -> str:
    return cmd.log.read_text(errors="replace") if cmd.log and cmd.log.is_file() else ""


def train_run(r: Runner, name: str, overrides: list[str], sz: Sizes, cap: float | None = None) -> dict:
    """``hpc-dl train`` until it has logged ``sz.windows`` metrics windows; their medians."""
    run_dir = r.work / name
    steps = sz.every * (sz.windows + 1)  # one spare window: the stop comes before evaluation starts
    argv = [PY, "-m", "hpc_dl", "train", *QUIET, *overrides, f"train.steps={steps}", f"log.every={sz.every}",
            "--run-dir", run_dir]  # fmt: skip
    cmd = r.run(argv, cap, stop_when=lambda: len(_train_windows(run_dir)) >= sz.windows)
    result = {"status": cmd.status, "wall_s": cmd.elapsed_s, **_medians(_train_windows(run_dir))}
    found = re.search(r"training \S+ \(([\d,]+) parameters\)", _log(cmd))
    result["parameters"] = int(found.group(1).replace(",", "")) if found else None
    if cmd.status == "over budget" and result["windows"] >= 2:
        r.part.notes.append(f"{name}: killed at its budget after {result['windows']} windows; measured from those")
    return result


def _ok(result: dict) -> bool:
    return result.get("status") in ("ok", "stopped") and result.get("windows_measured", 0) >= 1


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- parts
def gpu_test_files() -> list[str]:
    """Every test file with a GPU-marked test; pytest is given only these, so modules that need
    packages the GPU machine lacks are never collected there. tests/gpu/ (torch.compile, the slowest)
    goes last, so that running over the budget costs the fewest results."""
    marked = re.compile(r"pytest\.mark\.gpu\b")
    files = [p for p in (ROOT / "tests").rglob("test_*.py") if marked.search(p.read_text(errors="replace"))]
    files.sort(key=lambda p: (p.parent.name == "gpu", p))
    return [str(p.relative_to(ROOT)) for p in files]


def part_tests(r: Runner, sz: Sizes, dry: bool) -> None:
    p, m = r.part, r.part.measurements
    m["files"] = gpu_test_files()
    # -v prints each test's outcome as it ends, so a run killed at its budget still says which passed;
    # a test that hangs fails after 90 s (pytest-timeout) and the others still run.
    # Without CUDA (the dry run) conftest deselects every GPU test and pytest exits 5, "no tests ran".
    argv = [PY, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-v", "-o", "timeout=90", *m["files"]]
    text = _log(r.run(argv, ok=(0, 5) if dry else (0,)))
    outcomes = dict(re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", text, re.M))
    for outcome in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
        m[outcome.lower()] = sorted(t for t, o in outcomes.items() if o == outcome)
    deselected = re.search(r"(\d+) deselected", text)
    m["deselected"] = int(deselected.group(1)) if deselected else 0
    if dry:
        p.notes.append(f"dry run: no CUDA, so the {m['deselected']} GPU tests were collected and deselected")
        p.target("GPU tests collected", m["deselected"], ">=", 1)
    else:
        bad = len(m["failed"]) + len(m["error"])
        ran = bad + len(m["passed"]) + len(m["skipped"])  # none: pytest broke before any test ended
        p.target("GPU tests failed", bad if ran else None, "==", 0, f"{len(m['passed'])} passed, "
                 f"{len(m['skipped'])} skipped")  # fmt: skip


def part_gemm(r: Runner, sz: Sizes, dry: bool) -> None:
    p, m = r.part, r.part.measurements
    bench = ["bench", "gemm", "--dtypes", sz.gemm_dtypes, *sz.gemm_repeats, *sz.device, "--out", r.work / "gemm.json"]
    r.run([PY, "-m", "hpc_dl", *bench])
    r.run([PY, BENCH / "gpu" / "matmul.py", *sz.matmul, "--out", r.work / "matmul.json"])
    gemm, loop = _json(r.work / "gemm.json"), _json(r.work / "matmul.json")
    if gemm:
        m["device"] = gemm["device"]
        m["achievable_tflops"] = gemm["achievable_tflops"]
        m["rows"] = [{k: row[k] for k in ("dtype", "m", "k", "n", "tflops")} for row in gemm["rows"]]
    if loop:
        m["plain_loop"] = loop
    if gemm and loop:
        same = [x for x in gemm["rows"] if (x["dtype"], x["m"], x["k"], x["n"]) == (loop["dtype"], *[loop["m"]] * 3)]
        if same:
            m["bench_same_shape_tflops"] = same[0]["tflops"]
            m["ratio_to_plain_loop"] = same[0]["tflops"] / loop["tflops"]
    shape = f"{loop['dtype']} {loop['m']}^3" if loop else "the same shape"
    p.target(f"bench gemm / plain matmul loop ({shape})", m.get("ratio_to_plain_loop"), ">=", TARGETS["gemm_ratio"])
    dtype = sz.matmul[sz.matmul.index("--dtype") + 1]  # bf16 on the GPU
    best = (m.get("achievable_tflops") or {}).get(dtype)
    p.target(f"best {dtype} TFLOP/s vs cuBLAS bf16 on these machines", best, "ref", GEMM_REFERENCE_TFLOPS,
             "random data, 8192^3, device KINDS.md")  # fmt: skip


def part_gpt(r: Runner, sz: Sizes, dry: bool) -> None:
    p, m = r.part, r.part.measurements
    # Eager first, so a number exists whatever compilation does; it gets at most half the budget.
    m["eager"] = train_run(r, "gpt-eager", sz.gpt, sz, cap=p.budget_s / 2)
    if sz.compile_gpt and r.left() > 20:
        m["compiled"] = train_run(r, "gpt-compiled", [*sz.gpt, "train.compile=true"], sz)
        if not _ok(m["compiled"]):
            p.notes.append("torch.compile did not give a measurement within the budget; the eager figures stand")
    elif sz.compile_gpt:
        p.notes.append("no time left to try torch.compile")
    else:
        p.notes.append("dry run: torch.compile not tried (its CPU build takes minutes); the GPU run tries it")
    runs = [k for k in ("eager", "compiled") if k in m and _ok(m[k])]
    best = max(runs, key=lambda k: m[k].get("mfu") or 0, default=None)
    m["best"] = best
    pick = m[best] if best else {}
    m["parameters"] = m["eager"].get("parameters")
    p.target("tokens/s", pick.get("tokens_per_s"), "ref", "-", best or "")
    p.target("MFU (dense bf16 peak)", pick.get("mfu"), ">=", TARGETS["gpt_mfu"],
             f"goal {TARGETS['gpt_mfu_goal']}; peak {pick.get('peak_tflops')} TFLOP/s; {best}")  # fmt: skip


def part_resnet50(r: Runner, sz: Sizes, dry: bool) -> None:
    p = r.part
    p.measurements = result = train_run(r, "resnet50", sz.resnet50, sz)
    p.target("images/s", result.get("samples_per_s"), ">=", TARGETS["resnet50_images_per_s"])
    p.target("images/s vs NVIDIA's A100 AMP figure", result.get("samples_per_s"), "ref", RESNET50_A100_AMP)


def _alternating(r: Runner, script: str, args: list[str], name: str) -> dict | None:
    out = r.work / f"{name}.json"
    r.run([PY, BENCH / script, *args, "--out", out])
    result = _json(out)
    if result:
        keep = ("median_ratio", "overhead_percent", "ratio_min", "ratio_max", "median_step_ms", "pairs_ms", "setup")
        result = {k: result[k] for k in keep}
    return result


def part_overhead(r: Runner, sz: Sizes, dry: bool) -> None:
    p = r.part
    p.measurements = result = _alternating(r, "trainer_overhead.py", sz.overhead, "trainer_overhead") or {}
    p.target("hpc_dl step time / hand loop", result.get("median_ratio"), "<=", TARGETS["trainer_ratio"],
             "median of alternating pairs; same model, data, optimizer, no clipping on either side")  # fmt: skip


def part_loaders(r: Runner, sz: Sizes, dry: bool) -> None:
    p, m = r.part, r.part.measurements
    data = r.work / "data"
    r.run([PY, BENCH / "gpu" / "make_data.py", "--out", data, *sz.make_data], cap=p.budget_s / 4)
    for name, overrides, root in (("cifar10", sz.cifar, data), ("imagefolder", sz.imagefolder, data / "imagefolder")):
        if not root.is_dir():
            continue
        cap = r.left() / 2 if name == "cifar10" else None  # half of what is left each
        result = train_run(r, f"loader-{name}", [*overrides, f"data.root={root}"], sz, cap)
        if result.get("data_s") is not None and result.get("step_s"):
            result["data_share"] = result["data_s"] / result["step_s"]
        m[name] = result
        p.target(f"{name}: data wait / step", result.get("data_share"), "<=", TARGETS["data_share"],
                 f"{result.get('samples_per_s') or 0:.0f} images/s")  # fmt: skip


def part_telemetry(r: Runner, sz: Sizes, dry: bool) -> None:
    p, m = r.part, r.part.measurements
    m["telemetry"] = result = _alternating(r, "telemetry_overhead.py", sz.telemetry, "telemetry_overhead") or {}
    p.target("step time telemetry on / off", result.get("median_ratio"), "<=", TARGETS["telemetry_ratio"],
             "on: a record every 10 steps + utilisation sampler (W&B is not installed there)")  # fmt: skip
    r.run([PY, "-m", "hpc_dl", "bench", "allreduce", *sz.allreduce, "--timeout", "60", "--out", r.work / "allreduce"])
    report = _json(r.work / "allreduce" / "collectives.json")
    if report:
        keep = ("backend", "world_size", "device", "nccl", "all_correct", "peak_busbw_gbs")
        m["allreduce"] = {k: report[k] for k in keep}
        m["allreduce"]["largest"] = max(report["rows"], key=lambda row: row["bytes"])
    ar = m.get("allreduce", {})
    p.target("one-rank all-reduce checked", ar.get("all_correct"), "==", True, f"backend {ar.get('backend')}")


PARTS = {
    "tests": ("GPU-marked tests (pytest -m gpu)", part_tests),
    "gemm": ("matmul throughput: hpc-dl bench gemm vs a plain loop", part_gemm),
    "gpt": ("GPT ~350M, context 1024, bf16, through hpc-dl train", part_gpt),
    "resnet50": ("ResNet-50 224x224, channels_last, bf16, synthetic on device", part_resnet50),
    "overhead": ("hpc_dl trainer vs a hand-written loop (ResNet-50)", part_overhead),
    "loaders": ("CIFAR and ImageFolder loaders with workers feeding ResNet-50", part_loaders),
    "telemetry": ("telemetry on/off, and a one-rank NCCL all-reduce", part_telemetry),
}


# -------------------------------------------------------------------------- report
def environment(env: dict) -> dict:
    """GPU, driver, CUDA, torch and hpc_dl versions, host and date. Asked of hpc-dl info in a
    subprocess (torch may hang or fail to import) and of nvidia-smi for the driver."""
    info = {"hostname": socket.gethostname(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    try:
        proc = subprocess.run([PY, "-m", "hpc_dl", "info", "--json"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        found = json.loads(proc.stdout)
        keep = ("device", "gpu_count", "cuda", "cudnn", "nccl", "torch", "torchvision", "hpc_dl", "git", "python")
        info.update({k: found.get(k) for k in keep})
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        info["info_error"] = f"hpc-dl info --json failed: {type(e).__name__}"
    if shutil.which("nvidia-smi"):
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit", "--format=csv,noheader"]
            line = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
            info.update(zip(("gpu_name", "driver", "gpu_memory", "power_limit"), (s.strip() for s in line.split(","))))
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["driver"] = None
    return info


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(report: dict) -> str:
    e = report["environment"]
    dry = " -- DRY RUN on the CPU: tiny sizes, no figure here measures a GPU" if report["dry_run"] else ""
    lines = [f"# GPU acceptance{dry}", "",
             f"{e.get('gpu_name') or e.get('device')}, driver {e.get('driver') or '-'}, CUDA {e.get('cuda')}, "
             f"torch {e.get('torch')}, torchvision {e.get('torchvision')}, hpc_dl {e.get('hpc_dl')} "
             f"({e.get('git') or 'no git'}), Python {e.get('python')}, host {e['hostname']}, {e['date'][:19]} UTC", "",
             f"Wall time {report['wall_s']:.0f} s of {report['total_budget_s']:.0f} s. "
             f"Targets met: {report['targets_met']} of {report['targets_checked']} checked.", "",
             "| part | status | s / budget | measured | value | target | met | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for part in report["parts"]:
        head = f"| {part['id']} | {part['status']} | {part['elapsed_s']:.0f} / {part['budget_s']:.0f} "
        rows = part["targets"] or [{"what": "-", "measured": None, "target": "-", "met": None, "note": ""}]
        for i, t in enumerate(rows):
            lead = head if i == 0 else "| | | "
            lines.append(f"{lead}| {t['what']} | {_fmt(t['measured'])} | {t['target']} | {_fmt(t['met'])} "
                         f"| {t['note']} |")  # fmt: skip
    lines.append("")
    for part in report["parts"]:
        if part["notes"]:
            lines.append(f"- **{part['id']}** ({part['title']}): " + "; ".join(part["notes"]))
    lines.append("")
    lines.append("Everything measured, the commands and the end of each log: results.json; full logs: run.log.")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    checked = [t for part in report["parts"] for t in part["targets"] if t["met"] is not None]
    report["targets_checked"], report["targets_met"] = len(checked), sum(t["met"] for t in checked)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(report))


def _as_dict(part: Part) -> dict:
    d = dict(part.__dict__)
    d["commands"] = [c.__dict__ for c in part.commands]
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and run.log")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: every part, no GPU figures")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=S", help="a part's seconds (repeatable)")
    ap.add_argument("--total", type=float, help="seconds for everything (default 480 on a GPU)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    mode = "dry" if args.dry_run else "gpu"
    budgets = dict(BUDGETS[mode])
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in budgets or not seconds.replace(".", "", 1).isdigit():
            ap.error(f"--budget {item}: give PART=SECONDS, PART one of {', '.join(PARTS)}")
        budgets[name] = float(seconds)
    chosen = [name for name in args.parts.split(",") if name]
    unknown = [name for name in chosen if name not in PARTS]
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="hpc_dl_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    if args.dry_run:  # two threads per process on a shared 2-core machine wait on each other, 4x slower
        env.setdefault("OMP_NUM_THREADS", "1")
    total = args.total or TOTAL[mode]
    start = time.monotonic()
    runner = Runner(args.out, work, total, env)
    runner.say(f"GPU acceptance{' (dry run)' if args.dry_run else ''}: parts {', '.join(chosen)}; work in {work}")
    report = {"suite": "hpc_dl GPU acceptance (issue 19)", "dry_run": args.dry_run, "total_budget_s": total,
              "targets": TARGETS, "environment": environment(env), "parts": []}  # fmt: skip
    sz = sizes(args.dry_run)
    try:
        for name in chosen:
            title, run_part = PARTS[name]
            part = runner.part = Part(name, title, budgets[name])
            runner.part_deadline = time.monotonic() + part.budget_s
            if runner.deadline - time.monotonic() < 5:
                part.status = "skipped"
                part.notes.append("skipped: the total time was used up")
            else:
                runner.say(f"== {name}: {title} (budget {part.budget_s:.0f} s)")
                t0 = time.monotonic()
                try:
                    run_part(runner, sz, args.dry_run)
                except Exception as e:  # noqa: BLE001 - one broken part must not cost the others' results
                    part.notes.append(f"the part's own code failed: {type(e).__name__}: {e}")
                    part.status = "failed"
                part.elapsed_s = round(time.monotonic() - t0, 1)
                states = {c.status for c in part.commands}
                if part.status != "failed":
                    part.status = ("over budget" if "over budget" in states else
                                   "failed" if "failed" in states else "ok")  # fmt: skip
            report["parts"].append(_as_dict(part))
            report["wall_s"] = time.monotonic() - start
            write_report(args.out, report)  # after every part: a killed run still leaves its results
    finally:
        runner.log.close()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = time.monotonic() - start
    write_report(args.out, report)
    print((args.out / "results.md").read_text())
    return 0 if all(p["status"] == "ok" for p in report["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
