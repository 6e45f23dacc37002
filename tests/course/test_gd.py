"""`hpc-dl demo gd`: optimizers from the registry on the three teaching surfaces."""

import json

import matplotlib.image
import pytest

from hpc_dl.course import gd

QUADRATIC, ROSENBROCK, SADDLE = (gd.SURFACES[n] for n in ("quadratic", "rosenbrock", "saddle"))


@pytest.mark.parametrize("spec", ["sgd@0.04", "momentum@0.01", "nesterov@0.01", "adam@0.05", "adamw@0.05"])
def test_every_optimizer_converges_on_the_quadratic(spec):
    name, lr = gd.parse_optimizer(spec, 1e-3)
    run = gd.descend(QUADRATIC, name, lr, QUADRATIC.start, 3000)
    assert not run["diverged"] and run["distance_to_minimum"] < 1e-4 and run["loss"] < 1e-8


def test_adam_gets_closer_than_sgd_on_rosenbrock_at_stable_rates():
    sgd = gd.descend(ROSENBROCK, "sgd", 1e-3, ROSENBROCK.start, 2000)
    adam = gd.descend(ROSENBROCK, "adam", 1e-2, ROSENBROCK.start, 2000)
    assert not sgd["diverged"] and not adam["diverged"]  # both rates are stable here
    assert sgd["loss"] < ROSENBROCK(*[float(v) for v in ROSENBROCK.start])  # SGD does descend ...
    assert adam["distance_to_minimum"] < sgd["distance_to_minimum"] / 2  # ... Adam gets much closer


def test_saddle_on_the_axis_converges_off_it_escapes_and_momentum_escapes_sooner():
    on = gd.descend(SADDLE, "sgd", 0.05, (1.5, 0.0), 1000)
    assert on["distance_to_minimum"] < 1e-8  # the saddle point (0, 0): the gradient never leaves y = 0
    plain = gd.descend(SADDLE, "sgd", 0.05, (1.5, 1e-3), 1000)
    heavy = gd.descend(SADDLE, "momentum", 0.05, (1.5, 1e-3), 1000)
    for run in (plain, heavy):
        assert abs(abs(run["final"][1]) - 1) < 1e-3 and abs(run["final"][0]) < 1e-3  # a minimum (0, +-1)
    assert gd.escape_step(heavy["path"]) < gd.escape_step(plain["path"])


def test_too_large_a_rate_is_reported_as_diverged():
    run = gd.descend(ROSENBROCK, "sgd", 0.01, ROSENBROCK.start, 100)
    assert run["diverged"] and run["steps"] < 100


def test_demo_command_prints_and_plots(cli, tmp_path):
    proc = cli("demo", "gd", "--function", "saddle", "--optimizers", "sgd@0.05,momentum@0.05", "--steps", "300",
               "--start=1.5,0.001", "--out", tmp_path)  # fmt: skip
    assert "momentum" in proc.stdout and "to saddle point" in proc.stdout
    result = json.loads((tmp_path / "gd_saddle.json").read_text())
    assert [r["optimizer"] for r in result["runs"]] == ["sgd", "momentum"]
    assert matplotlib.image.imread(tmp_path / "gd_saddle.png").shape[2] in (3, 4)
    bad = cli("demo", "gd", "--optimizers", "sgd,lbfgs", check=False)
    assert bad.returncode == 2 and "lbfgs" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("demo", "gd", "--start=1", check=False)
    assert bad.returncode == 2 and "--start" in bad.stderr


@pytest.mark.parametrize("surface", list(gd.SURFACES))
def test_without_a_rate_each_optimizer_runs_at_its_best_on_the_surface(surface):
    """The default rates let each optimizer converge (plain SGD on Rosenbrock's valley is slow by
    nature); on Rosenbrock Adam no longer looks worst, as it did at SGD's 0.001."""
    s = gd.SURFACES[surface]
    runs = {name: gd.descend(s, *gd.parse_optimizer(name, None, surface), s.start, 2000) for name in gd.OPTIMIZERS}
    assert not any(r["diverged"] for r in runs.values())
    low = -0.25 if surface == "saddle" else 0.0  # the saddle's minima are at (0, +-1)
    slow = {"sgd"} if surface == "rosenbrock" else set()
    assert all(r["loss"] - low < 1e-3 for name, r in runs.items() if name not in slow), runs
    if surface == "rosenbrock":
        assert runs["adam"]["distance_to_minimum"] < runs["sgd"]["distance_to_minimum"] / 10
        assert gd.descend(s, "adam", 1e-3, s.start, 2000)["distance_to_minimum"] > 0.5  # what it looked like


def test_the_plot_has_axes_a_colour_bar_and_marks_a_diverged_path():
    runs = [gd.descend(ROSENBROCK, "sgd", 0.01, ROSENBROCK.start, 100), gd.descend(ROSENBROCK, "adam", 0.5,
            ROSENBROCK.start, 100)]  # fmt: skip
    fig = gd.figure(ROSENBROCK, runs)
    ax, bar = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y") and bar.get_ylabel().startswith("loss f(x, y) = ")
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0].startswith("sgd lr=0.01 (diverged at step ") and labels[1] == "adam lr=0.5"
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_color() == ax.get_lines()[0].get_color()


def test_a_negative_start_is_accepted_as_typed(cli, tmp_path):
    proc = cli("demo", "gd", "--function", "saddle", "--start", "-1,0.01", "--steps", "50", "--out", tmp_path)
    assert "saddle from (-1.0, 0.01)" in proc.stdout
    assert json.loads((tmp_path / "gd_saddle.json").read_text())["runs"][0]["start"] == [-1.0, 0.01]
