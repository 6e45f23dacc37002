"""`hpc-dl lr-find`: the learning-rate range test, its suggestion, plot and files."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from hpc_dl import config
from hpc_dl.errors import UserError
from hpc_dl.telemetry.plots import plt
from hpc_dl.training import lr_find
from tests.conftest import run_cli

FAST = ["data.batch_size=32"]  # the breast-cancer MLP: a step takes about a millisecond


@pytest.fixture(scope="module")
def swept():
    """The breast-cancer MLP swept from 1e-5 to 100: its loss falls, then diverges."""
    return lr_find.find(config.load("breast_cancer_mlp", FAST), steps=60, start=1e-5, end=100.0)


def test_the_curve_is_recorded_and_smoothed(swept):
    lrs, losses, smoothed = (np.array(swept[k]) for k in ("lrs", "losses", "smoothed"))
    assert 5 < len(lrs) <= 60 and len(losses) == len(smoothed) == len(lrs)
    np.testing.assert_allclose(lrs, lr_find.learning_rates(60, 1e-5, 100.0)[: len(lrs)])  # exponential growth
    assert lrs[0] == pytest.approx(1e-5) and np.allclose(lrs[1:] / lrs[:-1], (1e7) ** (1 / 59))
    # exponential moving average, beta 0.98, bias-corrected: the first point is the first loss
    beta, avg, expected = 0.98, 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        expected.append(avg / (1 - beta ** (i + 1)))
    np.testing.assert_allclose(smoothed, expected, rtol=1e-12)
    assert smoothed[0] == pytest.approx(losses[0])
    assert np.isfinite(losses).all() and losses[0] == pytest.approx(np.log(2), abs=0.3)  # binary CE at the start


def test_the_sweep_stops_when_the_loss_diverges(swept):
    smoothed = np.array(swept["smoothed"])
    assert swept["stopped"] and "diverged" in swept["stopped"], swept["stopped"]
    assert len(smoothed) < 60 and smoothed[-1] > 4 * smoothed[:-1].min()  # passed 4x its lowest: stopped there
    assert (smoothed[:-1] <= 4 * np.minimum.accumulate(smoothed)[:-1]).all()  # not before


def _fake_sweep(monkeypatch, losses):
    """_sweep on a stand-in trainer whose steps give ``losses``."""
    given = iter(losses)
    monkeypatch.setattr(lr_find, "_step", lambda trainer, batches, lr, scales: next(given))
    trainer = SimpleNamespace(
        cfg=SimpleNamespace(optim=SimpleNamespace(lr=1.0)), stream=[],
        strategy=SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"initial_lr": 1.0}])),
        model=SimpleNamespace(train=lambda: None),
    )  # fmt: skip
    return lr_find._sweep(trainer, lr_find.learning_rates(len(losses), 1e-3, 1.0), 0.98, 4.0)


def test_a_non_finite_loss_ends_the_sweep_unrecorded(monkeypatch):
    out = _fake_sweep(monkeypatch, [2.0, 1.9, 1.8, float("nan"), 1.0])
    assert out["losses"] == [2.0, 1.9, 1.8] and len(out["lrs"]) == len(out["smoothed"]) == 3
    assert out["stopped"].startswith("the loss was not finite at step 4")


def test_the_sweep_stops_at_four_times_the_lowest_smoothed_loss(monkeypatch):
    out = _fake_sweep(monkeypatch, [1.0] * 5 + [300.0] + [1.0] * 4)  # one spike: smoothed 1 -> about 7.1
    assert len(out["losses"]) == 6 and out["stopped"].startswith("diverged at step 6")
    assert out["smoothed"][-1] > 4 > out["smoothed"][-2]


def test_the_suggestion_is_in_the_range_and_below_divergence(swept):
    lr, lrs = swept["suggestion"], swept["lrs"]
    assert swept["suggestion_method"] == lr_find.STEEPEST
    assert 1e-5 <= lr <= 100.0 and lr in lrs
    assert lr < swept["min_loss_lr"] < lrs[-1]  # before the lowest loss, which is before the divergence
    assert swept["min_loss_lr_over_10"] == pytest.approx(swept["min_loss_lr"] / 10)
    i = lrs.index(lr)
    assert swept["smoothed"][i] < swept["smoothed"][0]  # the loss already falls there


def test_the_suggestion_is_the_steepest_descent():
    lrs = list(lr_find.learning_rates(50, 1e-4, 1.0))
    x = np.log10(lrs)
    smoothed = list(1.0 - 0.5 * np.tanh(3 * (x + 2)) + np.where(x > -0.5, 20 * (x + 0.5) ** 2, 0))  # falls at 1e-2
    lr, how = lr_find.suggest(lrs, smoothed)
    assert how == lr_find.STEEPEST and lr == pytest.approx(1e-2, rel=0.25)
    lr, how = lr_find.suggest(lrs[:5], [1.0, 0.5, 0.8, 0.9, 1.0])  # too short a descent for a slope
    assert how == lr_find.TENTH and lr == pytest.approx(lrs[1] / 10)


def test_the_learning_rate_is_the_one_applied(monkeypatch):
    """The schedule of the training run must not change the LR of a step (nor warm it up)."""
    applied, real = [], lr_find._step

    def spy(trainer, batches, lr, scales):  # the LR of the optimizer when the strategy steps it
        strategy = trainer.strategy
        step = strategy.step

        def recording(clip):
            applied.append(strategy.optimizer.param_groups[0]["lr"])
            return step(clip)

        strategy.step = recording
        try:
            return real(trainer, batches, lr, scales)
        finally:
            strategy.step = step

    monkeypatch.setattr(lr_find, "_step", spy)
    result = lr_find.find(config.load("breast_cancer_mlp", FAST), steps=8, start=1e-4, end=1e-2)
    np.testing.assert_allclose(applied, result["lrs"])
    assert result["stopped"] is None and len(result["lrs"]) == 8


def test_the_figure(swept):
    fig = lr_find.figure(swept)
    try:
        (ax,) = fig.axes
        assert ax.get_xscale() == "log"
        assert ax.get_xlabel() == "learning rate"
        assert ax.get_ylabel() == "loss (binary cross-entropy, nats)"
        title = ax.get_title()
        assert "mlp on breast_cancer" in title and f"{swept['suggestion']:.2g}" in title
        assert "diverged" in title
        markers = [line for line in ax.get_lines() if list(line.get_xdata()) == [swept["suggestion"]]]
        assert len(markers) == 1 and markers[0].get_marker() == "o"
        bottom, top = ax.get_ylim()
        assert bottom <= min(swept["smoothed"]) and top >= swept["smoothed"][0]
    finally:
        plt.close(fig)


def test_multiclass_loss_is_labelled_cross_entropy():
    result = lr_find.find(config.load(None, ["train.steps=5", "data.batch_size=16"]), steps=6, start=1e-4, end=1e-2)
    assert result["loss_label"] == "loss (cross-entropy, nats)" and result["task"] == "multiclass"


@pytest.mark.slow  # a process of its own
def test_the_command_writes_both_files(tmp_path):
    out = tmp_path / "lrf"
    proc = run_cli("lr-find", "breast_cancer_mlp", "--steps", "30", "--start", "1e-4", "--out", out, *FAST)
    (line,) = proc.stdout.splitlines()
    saved = json.loads((out / "lr_find.json").read_text())
    lr = saved["suggestion"]
    assert f"optim.lr={lr:.2g}" in line and line.startswith(f"suggested learning rate {lr:.2g}")
    assert {"lrs", "losses", "smoothed", "suggestion", "suggestion_method", "min_loss_lr"} <= set(saved)
    assert len(saved["lrs"]) == len(saved["losses"]) == len(saved["smoothed"]) <= 30
    assert (out / "lr_find.png").stat().st_size > 10_000
    # the override it prints is one `hpc-dl train` takes
    assert config.load("breast_cancer_mlp", [f"optim.lr={lr:.2g}"]).optim.lr == pytest.approx(lr, rel=0.05)


def test_the_default_folder_is_under_log_dir(tmp_path, capsys):
    from hpc_dl.cli import main

    assert main(["lr-find", "breast_cancer_mlp", "--steps", "5", f"log.dir={tmp_path}/runs", *FAST]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("lr_find-breast_cancer-mlp-") and str(folder) in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["lr_find.json", "lr_find.png"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--start", "1e-2", "--end", "1e-3"], "error: --end 0.001: must be greater than --start 0.01"),
        (["--start", "0"], "error: --start 0: must be a learning rate > 0"),
        (["--steps", "2"], "error: --steps 2: must be at least 5"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, message):
    proc = run_cli("lr-find", "breast_cancer_mlp", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == message and proc.stdout == ""


def test_several_processes_are_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"lr-find runs on one process, but 2 were started \(by torchrun\)"):
        lr_find.one_process(config.load("breast_cancer_mlp"), 10)
