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
