"""benchmarks/gpu/run.sh, the GPU acceptance command, kept from rotting where there is no GPU: its dry
run executes every part on the CPU at tiny sizes, with the packages the GPU machine lacks made absent."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_dl import config
from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"
ABSENT = ("wandb", "shap", "submitit", "deepspeed")  # not installed on the GPU machine
# Put on PYTHONPATH as sitecustomize.py, it makes those packages absent in every process the
# script starts; an attempt to import one is also written to the log, caught or not.
BLOCKER = f"""
import sys
import time
from pathlib import Path
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {ABSENT!r}:
            print(f"blocked import: {{name}}", file=sys.stderr)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
"""


def _acceptance():
    spec = importlib.util.spec_from_file_location("acceptance", ROOT / "benchmarks" / "gpu" / "acceptance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_optional_packages(tmp_path) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    inherited = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**inherited, "PYTHONPATH": str(site), "PYTHON": sys.executable}


def test_gpu_sizes_are_valid_configs():
    """The GPU run's overrides are checked here, where the dry run (other sizes) does not reach them."""
    acceptance = _acceptance()
    gpu = acceptance.sizes(dry=False)
    for overrides in (gpu.gpt, gpu.resnet50, [*gpu.cifar, "data.root=x"], [*gpu.imagefolder, "data.root=x"]):
        config.load(None, [*acceptance.QUIET, *overrides, "train.steps=10"])
    for args in (gpu.overhead, gpu.telemetry):
        sets = [a.removeprefix("--set=") for a in args if a.startswith("--set=")]
        config.load(None, ["data.name=synthetic_images", "model.name=resnet20", *sets])
    assert config.load(None, gpu.gpt).model.n_layer == 24
    files = acceptance.gpu_test_files()
    assert {
        "tests/training/test_gpu.py",
        "tests/telemetry/test_gpu_telemetry.py",
        "tests/gpu/test_training_gpu.py",
    } <= set(files)


@pytest.mark.slow
def test_training_and_benchmarks_import_none_of_the_optional_packages(tmp_path):
    code = (
        "import hpc_dl.cli, hpc_dl.training.run, hpc_dl.bench.gemm, hpc_dl.bench.collectives, hpc_dl.telemetry.sampler"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_without_optional_packages(tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "blocked import" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_dry_run_executes_every_part_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    env = _without_optional_packages(tmp_path)
    argv = ["bash", str(SCRIPT), "--dry-run", "--out", str(out)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
    report = json.loads((out / "results.json").read_text())
    parts = {p["id"]: p for p in report["parts"]}
    log = (out / "run.log").read_text()
    assert proc.returncode == 0, f"{ {k: p['status'] for k, p in parts.items()} }\n{log[-6000:]}"
    assert list(parts) == ["tests", "gemm", "gpt", "resnet50", "overhead", "loaders", "telemetry"]
    assert "blocked import" not in log  # nothing reached for W&B, SHAP, submitit or DeepSpeed

    environment = report["environment"]
    for key in ("device", "cuda", "torch", "torchvision", "hpc_dl", "hostname", "date"):
        assert environment[key], key
    m = {k: p["measurements"] for k, p in parts.items()}
    assert m["tests"]["deselected"] >= 10  # the GPU tests were collected (and deselected: no CUDA)
    assert m["gemm"]["achievable_tflops"]["fp32"] > 0 and m["gemm"]["ratio_to_plain_loop"] > 0
    assert m["gpt"]["eager"]["tokens_per_s"] > 0 and m["gpt"]["eager"]["mfu"] > 0 and m["gpt"]["best"] == "eager"
    assert m["resnet50"]["samples_per_s"] > 0 and m["resnet50"]["windows_measured"] >= 2
    assert m["overhead"]["median_ratio"] > 0
    for loader in ("cifar10", "imagefolder"):
        assert 0 <= m["loaders"][loader]["data_share"] < 1 and m["loaders"][loader]["status"] == "stopped"
    assert m["telemetry"]["telemetry"]["median_ratio"] > 0
    assert m["telemetry"]["allreduce"]["all_correct"] is True
    for part in parts.values():
        assert part["targets"] and all(t["measured"] is not None for t in part["targets"] if t["target"] != "ref -")
    md = (out / "results.md").read_text()
    assert "DRY RUN" in md and all(f"| {name} | ok |" in md for name in parts)


def _alive(pid: int) -> bool:
    """Running (a killed child nobody has reaped yet is a zombie: dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_part_over_its_budget_is_killed_with_its_children_and_the_run_goes_on(tmp_path, monkeypatch):
    acceptance = _acceptance()
    pid_file = tmp_path / "child.pid"
    hang = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]  # a hung command with a child of its own
    monkeypatch.setitem(acceptance.PARTS, "hang", ("hangs", lambda r, sz, dry: r.run(hang)))
    monkeypatch.setitem(acceptance.PARTS, "quick", ("measures", lambda r, sz, dry: r.run(["true"])))
    monkeypatch.setitem(acceptance.BUDGETS["dry"], "hang", 2)
    monkeypatch.setitem(acceptance.BUDGETS["dry"], "quick", 5)
    monkeypatch.setattr(acceptance, "environment", lambda env: {"hostname": "h", "date": "2026-01-01T00:00:00"})
    out = tmp_path / "out"
    assert acceptance.main(["--dry-run", "--out", str(out), "--parts", "hang,quick", "--work", str(tmp_path)]) == 1
    hung, quick = json.loads((out / "results.json").read_text())["parts"]
    assert hung["status"] == "over budget" and hung["elapsed_s"] < 10 and quick["status"] == "ok"
    assert any("killed, going on to the next part" in note for note in hung["notes"])
    child = int(pid_file.read_text())
    for _ in range(50):  # the whole process group went, not only the shell
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)
    assert "| hang | over budget |" in (out / "results.md").read_text()


def test_a_training_part_stops_once_measured(tmp_path):
    acceptance = _acceptance()
    runner = acceptance.Runner(tmp_path, tmp_path, 60, dict(os.environ))
    runner.part, runner.part_deadline = acceptance.Part("p", "t", 60), time.monotonic() + 60
    cmd = runner.run(["sleep", "60"], stop_when=lambda: True)
    runner.log.close()
    assert cmd.status == "stopped" and cmd.elapsed_s < 10
