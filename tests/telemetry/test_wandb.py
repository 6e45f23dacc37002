"""W&B: the offline run of a job is read back from its own files with the wandb CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from hpc_dl import config
from hpc_dl.telemetry import wandb_run
from hpc_dl.telemetry.metrics import read
from tests.conftest import CONFIGS

WANDB = Path(sys.executable).parent / "wandb"


def inspect(run_dir: Path, summary: bool, which: int = -1) -> dict | list[dict]:
    """`wandb leet inspect --json`: a run's records (or its summary) from its .wandb log, no network."""
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert offline, f"no offline W&B run under {run_dir}"
    args = [str(WANDB), "leet", "inspect", "--json", *(["--summary"] if summary else []), str(offline[which])]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line.strip()]


def test_offline_run_has_config_slurm_ids_and_summary(default_run):
    run_dir, proc = default_run
    run = inspect(run_dir, summary=True)
    assert run["state"] == "finished" and run["exit_code"] == 0
    assert run["project"] == "hpc_dl" and run["name"] == run_dir.name
    assert run["run_id"] == (run_dir / "wandb_id").read_text().strip()

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for section in ("model", "data", "optim", "train", "checkpoint", "log", "dist"):
        assert run["config"][section] == resolved[section], section
    assert run["config"]["slurm"]["job_id"] == "4242" and run["config"]["slurm"]["restart_count"] == 0
    env = json.loads((run_dir / "env.json").read_text())
    assert run["config"]["git"] == env["git"] and run["config"]["environment"]["torch"] == env["torch"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert run["summary"]["final/test_accuracy"] == summary["test"]["accuracy"]
    assert run["summary"]["final/val_loss"] == summary["val"]["loss"]
    assert run["summary"]["final/samples_per_s"] == summary["throughput"]["samples_per_s"] > 0
    assert run["summary"]["final/steps"] == summary["steps"] == 152
    assert "wandb sync" in proc.stdout  # how to upload it later


def test_offline_run_history_equals_metrics_file(default_run):
    run_dir, _ = default_run
    records = inspect(run_dir, summary=False)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    local = read(run_dir / "metrics.jsonl")
    train = [r for r in local if r["split"] == "train"]
    logged = [h for h in history if "train/loss" in h]
    assert [h["step"] for h in logged] == [r["step"] for r in train]
    assert [h["train/loss"] for h in logged] == [r["loss"] for r in train]
    assert [h["perf/data_s"] for h in logged] == [r["data_s"] for r in train]  # speed: its own section
    assert not [k for h in logged for k in h if k.startswith("train/") and k.endswith(("_s", "_per_s"))]
    assert all(h["system/rss_gib_min"] > 0 for h in logged)  # per-rank host metrics: min/median/max
    assert not [k for h in history for k in h if k.startswith("ranks/")]  # no chart per rank
    assert not [h for h in history if "test/accuracy" in h]  # the test result is a summary, not a chart
    assert inspect(run_dir, summary=True)["summary"]["test/accuracy"] == local[-1]["accuracy"]

    axes = {r["metric"].get("glob_name"): r["metric"].get("step_metric") for r in records if r["type"] == "metric"}
    assert axes["train/*"] == axes["val/*"] == axes["perf/*"] == axes["system/*"] == "step"


def test_offline_run_has_the_curves_as_images(default_run):
    run_dir, _ = default_run
    summary = inspect(run_dir, summary=True)["summary"]
    for name in ("curves/loss", "curves/accuracy"):
        image = summary[name]
        assert image["_type"] == "image-file"
        path = next((run_dir / "wandb").glob("offline-run-*")) / "files" / image["path"]
        assert matplotlib.image.imread(path).shape[:2] == (image["height"], image["width"])


STARTED_LATE = """
import sys
from pathlib import Path
from hpc_dl import config
from hpc_dl.telemetry.wandb_run import WandbRun
out = Path(sys.argv[1])
run = WandbRun.start(config.load(None, ["log.wandb=true"]), out, {}, say=print)
assert "wandb" not in sys.modules, "W&B was imported before the first record"
for step in range(1, 6):
    run.log({"split": "train", "step": step, "loss": 1.0 / step})
run.finish(None, [])
"""


def test_wandb_starts_off_the_critical_path_and_keeps_every_record(tmp_path):
    """Training's start does not wait for W&B: nothing of wandb is imported until the first record,
    which begins the start on a thread; the records logged meanwhile all reach the run, in order."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-c", STARTED_LATE, str(tmp_path)], check=True, timeout=180, env=env)
    history = [r["history"]["item"] for r in inspect(tmp_path, summary=False) if r["type"] == "history"]
    assert [(h["step"], h["train/loss"]) for h in history] == [(s, 1.0 / s) for s in range(1, 6)]


def test_a_start_that_raises_costs_only_the_dashboard(tmp_path, monkeypatch):
    """An exception on the start thread (a broken wandb install) is said in one line; logging and
    finishing go on without W&B."""

    def broken(*args):
        raise RuntimeError("broken install")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb_run.WandbRun, "_open", staticmethod(broken))
    said = []
    run = wandb_run.WandbRun.start(config.load(None, ["log.wandb=true"]), tmp_path, {}, say=said.append)
    run.log({"split": "train", "step": 1, "loss": 1.0})
    run.finish(None, [])
    assert run.run is None and said == ["W&B: could not start (RuntimeError: broken install); metrics go to "
                                        "metrics.jsonl only"]  # fmt: skip


def test_wandb_off_writes_nothing(cli, tmp_path):
    out = cli(
        "train", CONFIGS / "breast_cancer_mlp.yaml", "train.steps=20", "log.plots=false", "log.wandb=false",
        "--run-dir", tmp_path / "r", env={"WANDB_MODE": ""},
    ).stdout  # fmt: skip
    assert not (tmp_path / "r" / "wandb").exists() and not (tmp_path / "r" / "wandb_id").exists()
    assert "W&B" not in out


def test_resumed_job_continues_the_same_wandb_run(cli, tmp_path):
    args = [CONFIGS / "breast_cancer_mlp.yaml", "log.every=1", "log.plots=false"]
    env = {"WANDB_MODE": "offline", "SLURM_JOB_ID": "99", "SLURM_RESTART_COUNT": "0"}
    # Pre-empted after step 12 with a checkpoint at 10: the resumed segment redoes steps 11 and 12.
    cli("train", *args, "train.steps=30", "checkpoint.every=10", "--run-dir", tmp_path / "r", env=env)
    (tmp_path / "r" / "checkpoints" / "latest").write_text("step_00000010.pt\n")
    for late in ("step_00000030.pt", "step_00000030.pt.sha256"):
        (tmp_path / "r" / "checkpoints" / late).unlink()
    (tmp_path / "r" / "wandb_step").write_text("12\n")  # segment 1 had logged up to step 12
    restart = {**env, "SLURM_RESTART_COUNT": "1"}
    proc = cli("train", *args, "train.steps=30", "--run-dir", tmp_path / "r", "--resume", "auto", env=restart)
    segments = sorted((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert len(segments) == 2
    first, second = (inspect(tmp_path / "r", summary=True, which=i) for i in (0, 1))
    assert first["run_id"] == second["run_id"]
    assert second["config"]["slurm"]["restart_count"] == 1
    assert second["summary"]["final/steps"] == 30
    steps = [r["history"]["item"]["step"] for r in inspect(tmp_path / "r", summary=False, which=1)
             if r["type"] == "history" and "train/loss" in r["history"]["item"]]  # fmt: skip
    assert steps and min(steps) > 12 and steps == sorted(steps)  # no step logged twice into the one run
    assert f"wandb sync {segments[0]} {segments[1]}" in proc.stdout  # every segment, oldest first


@pytest.mark.parametrize(
    ("env", "netrc", "wanted", "expected"),
    [
        ({}, None, "auto", "offline"),
        ({"WANDB_API_KEY": "k"}, None, "auto", "online"),
        ({}, "machine api.wandb.ai\n  login user\n  password k\n", "auto", "online"),
        ({}, "machine example.org\n  login user\n  password k\n", "auto", "offline"),
        ({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, None, "auto", "offline"),
        ({"WANDB_MODE": "disabled"}, None, "online", "disabled"),
        ({"WANDB_API_KEY": "k"}, None, "offline", "offline"),
    ],
)
def test_mode_choice(monkeypatch, tmp_path, env, netrc, wanted, expected):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "netrc"
    if netrc:
        path.write_text(netrc)
        path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    assert wandb_run.choose_mode(wanted)[0] == expected


def test_flatten_names_metrics_by_section_and_summarises_ranks():
    ranks = [{"rank": r, "host": "a", "gpu_util": u, "samples": 3} for r, u in enumerate((90.0, 40.0, 70.0))]
    record = {"split": "train", "step": 7, "loss": 0.5, "step_s": 0.1, "note": "x", "flag": True, "ranks": ranks}
    expected = {"step": 7, "train/loss": 0.5, "perf/step_s": 0.1, "system/gpu_util_min": 40.0,
                "system/gpu_util_median": 70.0, "system/gpu_util_max": 90.0}  # fmt: skip
    assert wandb_run.flatten(record) == expected


@pytest.mark.slow
def test_api_key_without_network_falls_back_to_offline_and_records_no_free_text_slurm_variable(tmp_path):
    """A W&B server that accepts connections and never answers (a compute node behind a firewall
    that drops packets): the run goes offline at once instead of stalling, and keeps its record.
    W&B's own metadata would record every SLURM_* variable; free-text ones stay out of every file."""
    import os
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    comment = "free text the user typed into sbatch --comment"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_SERVICE")}
    env |= {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "SLURM_JOB_ID": "77", "SLURM_JOB_COMMENT": comment, "PYTHONUNBUFFERED": "1"}  # fmt: skip
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "hpc_dl", "train", "train.steps=3", "log.plots=false", "--run-dir", str(run)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    silent.close()
    assert proc.returncode == 0, proc.stderr
    assert "W&B: offline run" in proc.stdout and "did not answer within 3 s" in proc.stdout
    summary = inspect(run, summary=True)
    assert summary["state"] == "finished" and summary["config"]["slurm"]["job_id"] == "77"
    for path in run.rglob("*"):
        if path.is_file():
            assert comment.encode() not in path.read_bytes(), path
