"""What a run leaves behind, and what `hpc-dl info` reports."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import matplotlib.image
import pytest

from hpc_dl import config
from hpc_dl.telemetry.metrics import MetricsFile, read
from tests.conftest import CONFIGS, ROOT, SECRET


def test_run_directory_contents(default_run):
    run_dir, _ = default_run
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.yaml",
        "env.json",
        "metrics.jsonl",
        "summary.json",
        "loss.png",
        "accuracy.png",
        "checkpoints",
    } <= names
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000152.pt"


def test_saved_config_reproduces_the_run(default_run):
    run_dir, _ = default_run
    assert config.load(run_dir / "config.yaml") == config.load()


def test_metrics_records(default_run):
    run_dir, _ = default_run
    records = read(run_dir / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert {"step", "epoch", "loss", "accuracy", "lr", "grad_norm", "samples_per_s"} <= set(train[0])
    assert train[-1]["accuracy"] > train[0]["accuracy"]
    assert [r["step"] for r in train][:3] == [10, 20, 30] and train[-1]["step"] == 152
    assert all(r["samples_per_s"] > 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    evals = [r for r in records if r["split"] in ("val", "test")]
    assert {"loss", "accuracy", "samples"} <= set(evals[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["accuracy"] == [r for r in evals if r["split"] == "test"][-1]["accuracy"]


def test_plots_are_readable_pngs(default_run):
    run_dir, _ = default_run
    for name in ("loss.png", "accuracy.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(run_dir / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0.01  # something was drawn


def test_environment_manifest(default_run):
    run_dir, _ = default_run
    env = json.loads((run_dir / "env.json").read_text())
    import torch

    import hpc_dl

    assert env["hpc_dl"] == hpc_dl.__version__ and env["torch"] == torch.__version__
    assert env["device"] == "cpu" and env["host"] and "cuda" in env and "nccl" in env
    assert env["slurm"] == {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "1"}
    assert env["git"] is None or len(env["git"].split("-")[0]) == 40


def test_no_secret_in_any_run_file(default_run):
    run_dir, proc = default_run
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in proc.stdout + proc.stderr


def test_info_reports_versions_and_slurm(cli):
    out = cli("info", env={"SLURM_JOB_ID": "77", "SLURM_NODELIST": "n[1-2]", "WANDB_API_KEY": SECRET}).stdout
    assert "torch:" in out and "hpc_dl:" in out and "SLURM_JOB_ID = 77" in out and SECRET not in out
    report = json.loads(cli("info", "--json").stdout)
    assert {"torch", "cuda", "nccl", "device", "host", "git", "python"} <= set(report)


def test_version_and_module_entry_point(cli):
    import hpc_dl

    assert cli("--version").stdout.strip() == f"hpc_dl {hpc_dl.__version__}"
    assert "train" in cli().stdout


def test_metrics_file_drops_records_after_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"split": "train", "step": s}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    MetricsFile(path, resume_step=20).close()
    assert [r["step"] for r in read(path)] == [10, 20]


QUICK = [CONFIGS / "breast_cancer_mlp.yaml", "train.steps=40", "log.every=10", "log.plots=false"]


@pytest.mark.slow
def test_plain_progress_lines_when_output_is_not_a_terminal(cli, tmp_path):
    out = cli("train", *QUICK, "--run-dir", tmp_path / "r").stdout
    lines = [x for x in out.splitlines() if x.startswith("train step")]
    assert [x.split()[2] for x in lines] == ["10/40", "20/40", "30/40", "40/40"]
    assert "\r" not in out and "| loss " in lines[0] and "| eta " in lines[0]


@pytest.mark.slow
def test_live_bar_on_a_terminal(tmp_path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0x0
    args = [sys.executable, "-m", "hpc_dl", "train", *map(str, QUICK), "--run-dir", str(tmp_path / "r")]
    proc = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env={**os.environ})
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out and "40/40" in out and "step/s" in out
    assert "train step 10/40" not in out  # the bar replaces the plain lines


@pytest.mark.slow
def test_live_bar_fits_80_columns_and_no_note_freezes_it(tmp_path):
    """At 80 columns the bar keeps its width and the figures that fit; the CPU-run note is written
    through the bar, so no frozen '0%|' line is left above it."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    args = [sys.executable, "-m", "hpc_dl", "train", *map(str, QUICK), "--run-dir", str(tmp_path / "r")]
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env=env)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    out = b"".join(chunks).decode(errors="replace")
    screens = [s.rstrip("\n") for line in out.replace("\x1b[A", "\n").split("\n") for s in line.split("\r")]
    bars = [s for s in screens if "|" in s and "/40 [" in s]
    assert bars and all(len(s) <= 80 for s in bars), max(bars, key=len)
    assert "|" + "█" * 12 + "|" in bars[-1]  # the bar keeps its width
    assert "loss " in bars[-1] and "samples/s" in bars[-1]
    visible = [[seg for seg in line.split("\r") if seg.strip()][-1:] for line in out.split("\n")]  # after the \r
    frozen = [v for v in visible if v and v[0].strip().startswith("0%|")]
    assert not frozen, frozen


@pytest.mark.parametrize("low", [1.7, 0.004])  # within one decade, and over three
def test_curves_name_the_run_the_test_point_and_give_the_loss_readable_ticks_in_nats(low):
    from hpc_dl.telemetry.plots import curve_figure, plt

    train = [{"split": "train", "step": s, "loss": 2.3 * (low / 2.3) ** (s / 100), "accuracy": s / 100}
             for s in range(10, 101, 10)]  # fmt: skip
    records = [*train, {"split": "val", "step": 100, "loss": low * 1.1, "accuracy": 0.9},
               {"split": "test", "step": 100, "loss": low * 1.2, "accuracy": 0.88}]  # fmt: skip
    fig = curve_figure(records, "loss", "digits-cnn-20261202")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_title() == f"digits-cnn-20261202 (test loss {low * 1.2:.4g} at step 100)"
    assert ax.get_ylabel() == "loss (cross-entropy, nats)" and ax.get_yscale() == "log"
    assert f"test {low * 1.2:.4g}" in ax.get_legend_handles_labels()[1]
    bottom, top = ax.get_ylim()
    shown = [(t.get_position()[1], t.get_text()) for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
    shown = [(y, text) for y, text in shown if text and bottom <= y <= top]
    assert len(shown) >= 2 and all(float(text) == pytest.approx(y) for y, text in shown), shown  # 0.1, 2: not 10^-1
    plt.close(fig)
    accuracy = curve_figure(records, "accuracy", "digits-cnn-20261202")
    assert accuracy.axes[0].get_title().endswith("(test accuracy 0.88 at step 100)")
    plt.close(accuracy)
