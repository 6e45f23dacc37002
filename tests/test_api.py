"""The Python API (hpc_dl/api.py): what a notebook does with hpc_dl.train and hpc_dl.load."""

import json

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import hpc_dl
from hpc_dl import config
from hpc_dl.errors import ConfigError, UserError
from tests.conftest import ROOT

TINY = {"train.steps": 12, "train.eval_every": 6, "log.every": 3, "log.plots": False, "checkpoint.every": 12}


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return hpc_dl.train("breast_cancer_mlp", TINY, run_dir=tmp_path_factory.mktemp("api") / "bc")


def test_train_is_the_function_even_after_the_training_package_is_imported():
    import hpc_dl.training.run  # noqa: F401 - once hpc_dl.train was this package's name
    from hpc_dl import train

    assert callable(train) and train is hpc_dl.api.train


def test_train_returns_the_model_the_metrics_and_the_summary(mlp_run):
    run = mlp_run
    assert isinstance(run.model, nn.Module) and not run.model.training
    assert run.summary == json.loads((run.run_dir / "summary.json").read_text())
    assert run.summary["steps"] == 12 and 0 <= run.summary["test"]["accuracy"] <= 1
    history = run.history
    assert isinstance(history, pd.DataFrame)
    train = history[history["split"] == "train"]
    assert train["step"].tolist() == [3, 6, 9, 12] and train["loss"].notna().all()
    assert set(history["split"]) == {"train", "val", "test"}
    assert "summary.json" in run.files and "breast_cancer" in repr(run)


def test_a_loaded_run_predicts_as_the_trained_one(mlp_run):
    x = mlp_run._splits.test.tensors[0][:5]  # prepared like the training data (scaled)
    fresh = mlp_run.predict(x)
    assert list(fresh.columns) == ["malignant", "benign"] and fresh.shape == (5, 2)
    assert (fresh.sum(axis=1) - 1).abs().max() < 1e-6
    loaded = hpc_dl.load(mlp_run.run_dir)
    assert loaded.summary == mlp_run.summary
    pd.testing.assert_frame_equal(loaded.predict(x), fresh)
    for key, value in mlp_run.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_config_as_a_dict_or_a_name_with_cli_overrides_is_the_cli_config():
    as_dict = hpc_dl.api._config({"model": {"name": "mlp", "hidden": [8]}, "train": {"steps": 5}}, ["optim.lr=0.5"])
    as_cli = config.load(None, ["model.name=mlp", "model.hidden=[8]", "train.steps=5", "optim.lr=0.5"])
    assert config.to_dict(as_dict) == config.to_dict(as_cli)
    named = hpc_dl.api._config("breast_cancer_mlp", {"optim.lr": 0.25, "data.scaling": "minmax"})
    assert named.optim.lr == 0.25 and named.data.scaling == "minmax" and named.data.name == "breast_cancer"


def test_nested_overrides_merge_into_the_config_not_replace_its_section():
    nested = hpc_dl.api._config("breast_cancer_mlp", {"optim": {"lr": 0.01}, "train": {"steps": 30}})
    dotted = config.load("breast_cancer_mlp", ["optim.lr=0.01", "train.steps=30"])
    assert config.to_dict(nested) == config.to_dict(dotted) and nested.optim.name == "sgd"  # the file's, kept


def test_bad_config_values_get_the_cli_message():
    with pytest.raises(ConfigError) as api:
        hpc_dl.train("breast_cancer_mlp", {"optim.lr": -1})
    with pytest.raises(ConfigError) as cli:
        config.load("breast_cancer_mlp", ["optim.lr=-1"])
    assert str(api.value) == str(cli.value) and "optim.lr" in str(api.value)
    with pytest.raises(UserError, match="not int"):
        hpc_dl.train(42)


SHORT = {**TINY, "train.steps": 3, "train.eval_every": 3, "log.every": 1, "optim.warmup_steps": 0}


def test_rerunning_a_cell_trains_again_into_a_fresh_directory_or_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = hpc_dl.train("breast_cancer_mlp", SHORT)
    second = hpc_dl.train("breast_cancer_mlp", SHORT)
    assert first.run_dir != second.run_dir and first.run_dir.parent == second.run_dir.parent == tmp_path / "runs"
    again = hpc_dl.train("breast_cancer_mlp", SHORT,
                         run_dir=first.run_dir, resume="auto")  # fmt: skip
    assert again.summary == first.summary and again.run_dir == first.run_dir  # finished: loaded, not retrained


class Blobs(Dataset):
    """Three Gaussian blobs in 2-D, as a Dataset of one's own (not a TensorDataset)."""

    classes = ["left", "middle", "right"]

    def __init__(self, n=300):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 2, generator=g) * 0.3 + torch.stack([self.y.float() * 2 - 2, torch.zeros(n)], 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_your_own_module_and_dataset_train_with_the_trainers_features(tmp_path):
    torch.manual_seed(0)
    mine = Tiny()
    before = mine.net[0].weight.detach().clone()
    run = hpc_dl.train(None, {"train.steps": 60, "train.eval_every": 30, "log.every": 10, "optim.lr": 0.01,
                              "log.plots": False, "checkpoint.every": 30}, model=mine, data=Blobs(),
                       run_dir=tmp_path / "own")  # fmt: skip
    assert run.model is mine and not torch.equal(mine.net[0].weight, before)  # trained in place
    s = run.summary
    assert s["model"] == "Tiny" and s["data"] == "Blobs" and s["own_model"] and s["classes"] == Blobs.classes
    assert s["test"]["accuracy"] > 0.9 and s["test"]["samples"] == 45  # the default data.test_fraction, 0.15
    assert (tmp_path / "own/checkpoints/step_00000060.pt").is_file()  # checkpoints, metrics: the trainer's
    assert run.history[run.history["split"] == "train"]["step"].tolist() == [10, 20, 30, 40, 50, 60]
    assert s["throughput"]["samples_per_s"] > 0 and s["parameters"] == sum(p.numel() for p in mine.parameters())
    probs = run.predict(Blobs().x[:6])
    assert list(probs.columns) == Blobs.classes
    assert probs.idxmax(axis=1).tolist() == [Blobs.classes[i] for i in Blobs().y[:6]]
    with pytest.raises(UserError, match="your own module"):
        run.export()
    loaded = hpc_dl.load(tmp_path / "own", model=Tiny())
    pd.testing.assert_frame_equal(loaded.predict(Blobs().x[:6]), probs)
    with pytest.raises(UserError, match=r"your own module \(Tiny\): pass hpc_dl.load\(run_dir, model=Tiny"):
        hpc_dl.load(tmp_path / "own")
    with pytest.raises(UserError, match="does not fit the Sequential given"):
        hpc_dl.load(tmp_path / "own", model=nn.Sequential(nn.Linear(2, 3)))
    with pytest.raises(UserError, match=r"inputs of shape \(6, 5\) do not fit the model"):
        run.predict(torch.zeros(6, 5))


def test_own_datasets_as_train_val_test_and_as_a_dict(tmp_path):
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    parts = [TensorDataset(x[i : i + 20], y[i : i + 20]) for i in (0, 10, 20)]
    from hpc_dl.data import custom

    s = custom.splits(tuple(parts), 0.1, 0.1, 0)
    assert s.spec.task == "binary" and s.spec.num_outputs == 1 and s.test is parts[2] and s.test_source is None
    s = custom.splits({"train": parts[0], "val": parts[1]}, 0.1, 0.1, 0)
    assert s.test is parts[1] and "validation" in s.test_source
    with pytest.raises(UserError, match="keys train"):
        custom.splits({"training": parts[0]}, 0.1, 0.1, 0)
    with pytest.raises(UserError, match="Dataset"):
        custom.splits([1, 2, 3], 0.1, 0.1, 0)
    with pytest.raises(UserError, match="labels run from -1"):
        custom.splits(TensorDataset(x, y - 1), 0.1, 0.1, 0)


def test_processes_cannot_take_objects():
    with pytest.raises(UserError, match="cannot receive your model"):
        hpc_dl.train(None, model=Tiny(), processes=2)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Python API and notebooks", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(block, "README.md", "exec"), names)  # noqa: S102 - our own README
    assert names["probs"].shape == (3, 2) and list(names["probs"].columns) == ["malignant", "benign"]
    assert names["again"].summary == names["run"].summary and len(names["train"]) > 0
    assert names["run"].run_dir.parent == tmp_path / "runs"


def test_own_regression_learns_in_the_targets_units(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, generator=g)
    y = 300 * x.squeeze(1) + 1000 + torch.randn(400, generator=g)  # far from unit scale
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    run = hpc_dl.train(None, {"train.steps": 150, "train.eval_every": 150, "log.every": 50, "optim.lr": 0.01,
                              "optim.warmup_steps": 0, "log.plots": False}, model=net, data=TensorDataset(x, y),
                       run_dir=tmp_path / "reg")  # fmt: skip
    test = run.summary["test"]
    assert run.summary["task"] == "regression" and test["r2"] > 0.9 and "accuracy" not in test
    assert test["rmse"] < 30 and test["mae"] <= test["rmse"]  # in the target's units (a spread of 300)
    shift, scale = run.summary["target_units"]
    assert abs(shift - float(y.mean())) < 20 and abs(scale - float(y.std())) < 10
    x_test, y_test = run.samples("test", 5)  # labels in the target's units, as the predictions
    assert (run.predict(x_test)["prediction"] - y_test.numpy()).abs().max() < 30 and y_test.min() > 900
    assert run.summary["classes"] == []
    predicted = run.predict(torch.tensor([[0.0], [0.5], [1.0]]))["prediction"]
    assert [round(v, -1) for v in predicted] == pytest.approx([1000, 1150, 1300], abs=30)
