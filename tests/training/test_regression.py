"""Regression (``data.task: regression``): a number as the target, MSE on the standardised target,
RMSE, MAE and R^2 in the target's own units; CSV and synthetic tables, export and predict."""

import json
import math

import numpy as np
import pytest
import torch

from hpc_dl import config, data
from hpc_dl.errors import ConfigError, UserError

QUIET = ["log.wandb=false", "log.utilisation=false", "log.progress=off"]
HEADER = ["dose", "weight", "site", "efficacy"]


def efficacy(dose, weight, site):
    """The known relationship (in percent, say): linear in the dose and the weight, +5 at site B."""
    return 40 + 6 * dose - 0.5 * weight + 5 * (site == "B")


def write_table(path, n=300, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    dose, weight = rng.uniform(0, 10, n), rng.uniform(50, 100, n)
    site = np.where(rng.random(n) < 0.5, "A", "B")
    y = efficacy(dose, weight, site) + rng.normal(0, noise, n)
    lines = [",".join(HEADER), *(f"{d:.4f},{w:.3f},{s},{t:.4f}" for d, w, s, t in zip(dose, weight, site, y))]
    path.write_text("\n".join(lines) + "\n")
    return path, y


def csv_config(path, *overrides):
    return config.load(None, ["data.name=csv", f"data.path={path}", "data.target=efficacy", "data.task=regression",
                              "data.categorical=[site]", "model.name=mlp", "model.hidden=[]", *overrides])  # fmt: skip


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    from hpc_dl.training.run import train

    folder = tmp_path_factory.mktemp("regression")
    path, y = write_table(folder / "dose.csv")
    cfg = csv_config(path, "train.steps=150", "optim.lr=0.03", "train.eval_every=50", *QUIET)
    return train(cfg, run_dir=str(folder / "run")), folder / "run", y


@pytest.mark.slow
def test_a_linear_relationship_is_learnt_with_metrics_in_the_targets_units(csv_run):
    summary, run, y = csv_run
    test = summary["test"]
    assert set(test) == {"loss", "rmse", "mae", "r2", "samples"}  # no accuracy, no confusion matrix
    assert test["r2"] > 0.9 and summary["val"]["r2"] > 0.9
    # in percent, not in standard deviations: the noise has sd 1 and the target about 19
    assert 0.5 < test["rmse"] < 3 and 0.3 < test["mae"] < test["rmse"]
    assert y.std() > 15
    scale = data.build(config.load(run / "config.yaml").data).spec.preprocessing["target_scale"]
    assert test["rmse"] == pytest.approx(scale * math.sqrt(test["loss"]))  # the loss is the standardised MSE
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train and all("rmse" in r and "mae" in r and "accuracy" not in r for r in train)
    assert train[-1]["rmse"] < train[0]["rmse"]
    names = {p.name for p in run.iterdir()}
    assert {"loss.png", "rmse.png"} <= names and not {"accuracy.png", "confusion.png"} & names


@pytest.mark.slow
def test_the_curves_say_rmse_and_the_loss_is_the_standardised_mse(csv_run):
    from hpc_dl.telemetry.metrics import read
    from hpc_dl.telemetry.plots import curve_figure, plt

    _, run, _ = csv_run
    records = read(run / "metrics.jsonl")
    rmse = curve_figure(records, "rmse", run.name)
    assert rmse.axes[0].get_ylabel() == "RMSE (in the target's units)"
    assert rmse.axes[0].get_title().startswith(f"{run.name} (test RMSE ")
    loss = curve_figure(records, "loss", run.name)
    assert loss.axes[0].get_ylabel() == "loss (MSE of the standardised target)"
    assert curve_figure(records, "accuracy", run.name) is None
    plt.close("all")


@pytest.mark.slow
def test_predict_gives_numbers_in_the_targets_units(csv_run, tmp_path):
    from hpc_dl.course import export, predict

    _, run, _ = csv_run
    rows = [(2.0, 60.0, "A"), (8.0, 90.0, "B"), (5.0, 75.0, "B")]
    path = tmp_path / "new.csv"
    path.write_text("site,weight,dose\n" + "".join(f"{s},{w},{d}\n" for d, w, s in rows))  # any column order
    got = predict.predict(run, [str(path)])
    expected = [efficacy(d, w, np.array(s)) for d, w, s in rows]
    assert [g["input"] for g in got] == ["new.csv:2", "new.csv:3", "new.csv:4"]
    assert [g["prediction"] for g in got] == pytest.approx(expected, abs=2.0)
    assert all(g["top"] == [["efficacy", g["prediction"]]] and g["warnings"] == [] for g in got)
    meta = json.loads((run / "export" / export.META).read_text())
    assert meta["task"] == "regression" and meta["target"] == "efficacy" and meta["classes"] == ["efficacy"]
    program = torch.export.load(run / "export" / export.PROGRAM).module()  # our own file, just written
    x = torch.tensor([[d, w, float(s == "A"), float(s == "B")] for d, w, s in rows])  # site one-hot: A, B
    with torch.no_grad():
        assert program(x)[:, 0].tolist() == pytest.approx([g["prediction"] for g in got], rel=1e-5)


@pytest.mark.slow
def test_explain_explains_the_one_output(csv_run):
    from hpc_dl.course import explain

    _, run, _ = csv_run
    files = explain.explain(run, samples=4, background=10, say=lambda line: None)
    shap = json.loads((run / "explain" / "shap.json").read_text())
    assert shap["classes"] == ["efficacy"] and any(f.name.startswith("beeswarm") for f in files)
    assert shap["output"] == "prediction (in the target's units)"  # not a class probability
    values, base, predicted = np.array(shap["values"][0]), np.array(shap["base_values"]), np.array(shap["predictions"])
    assert values.sum(1) + base[:, 0] == pytest.approx(predicted[:, 0], rel=1e-4, abs=1e-3)  # additive, in percent


def test_the_split_is_a_seeded_shuffle_and_the_target_is_standardised_on_train(tmp_path):
    path, y = write_table(tmp_path / "dose.csv", n=200)
    splits = data.build(csv_config(path).data)
    spec = splits.spec
    assert spec.task == "regression" and spec.num_outputs == 1 and spec.class_names == []
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [139, 31, 30]  # as split_indices rounds
    targets = splits.train.tensors[1]
    assert targets.dtype == torch.float32
    assert float(targets.mean()) == pytest.approx(0, abs=1e-5) and float(targets.std(correction=0)) == pytest.approx(1)
    pre = spec.preprocessing
    train_raw = targets.double() * pre["target_scale"] + pre["target_shift"]
    assert pre["target"] == "efficacy" and pre["target_scale"] == pytest.approx(train_raw.std(correction=0).item())
    val_raw = (splits.val.tensors[1].double() * pre["target_scale"] + pre["target_shift"]).numpy()
    assert np.abs(val_raw[:, None] - y[None, :]).min(1).max() < 1e-3  # each is a row's, in its own units
    again = data.build(csv_config(path).data)
    assert torch.equal(again.test.tensors[1], splits.test.tensors[1])  # fixed by data.split_seed
    other = data.build(csv_config(path, "data.split_seed=1").data)
    assert not torch.equal(other.test.tensors[1], splits.test.tensors[1])


def test_a_word_in_the_target_column_names_the_line_and_column(tmp_path):
    path, _ = write_table(tmp_path / "dose.csv", n=40)
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ",high"  # line 5 of the file
    lines[7] = lines[7].rsplit(",", 1)[0] + ",NA"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as info:
        data.build(csv_config(path).data)
    message = str(info.value)
    assert str(path) in message and "2 bad row(s)" in message
    assert "line 5: column 'efficacy' = 'high' is not a number (data.task = regression)" in message
    assert "line 8: the target column 'efficacy' is missing" in message


def test_a_numeric_target_as_classification_says_to_use_regression(tmp_path):
    path, _ = write_table(tmp_path / "dose.csv", n=60)
    with pytest.raises(UserError, match="60 distinct values .* set data.task=regression"):
        data.build(csv_config(path, "data.task=auto").data)


def test_too_few_rows_for_a_regression_split(tmp_path):
    path, _ = write_table(tmp_path / "dose.csv", n=3)
    with pytest.raises(UserError, match="too few rows .* 3 data rows"):
        data.build(csv_config(path).data)


def test_task_regression_needs_a_table():
    with pytest.raises(ConfigError, match=r"data.task = 'regression'.*needs a table"):
        config.load(None, ["data.name=synthetic_images", "data.task=regression"])
    with pytest.raises(ConfigError, match="must be one of auto, classification, regression"):
        config.load(None, ["data.name=csv", "data.task=numbers"])


def test_synthetic_tabular_regression_is_seeded_and_planned_from_the_config():
    cfg = config.load(None, ["data.name=synthetic_tabular", "data.shape=[6]", "data.task=regression",
                             "data.samples=64", "model.name=mlp"]).data  # fmt: skip
    a, b = data.build(cfg), data.build(cfg)
    assert a.spec.task == "regression" and a.spec.num_outputs == 1
    assert torch.equal(a.train.tensors[1], b.train.tensors[1]) and a.train.tensors[1].dtype == torch.float32
    planned = data.shape_spec(cfg)
    assert planned.task == "regression" and planned.num_outputs == 1 and planned.input_shape == (6,)


@pytest.mark.slow
def test_synthetic_tabular_regression_is_learnable(tmp_path):
    from hpc_dl.training.run import train

    cfg = config.load(None, ["data.name=synthetic_tabular", "data.shape=[8]", "data.task=regression",
                             "data.samples=1024", "model.name=mlp", "train.steps=100", "train.eval_every=0",
                             "log.plots=false", *QUIET])  # fmt: skip
    summary = train(cfg, run_dir=str(tmp_path / "run"))
    assert summary["test"]["r2"] > 0.8 and summary["test"]["samples"] == 256
