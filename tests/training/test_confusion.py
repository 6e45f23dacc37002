"""The confusion matrix and per-class accuracy of a classification run's test split: in
summary.json, drawn in confusion.png, and kept out of metrics.jsonl."""

import json

import pytest

from hpc_dl import config
from hpc_dl.training.run import train
from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow

QUIET = ["log.wandb=false", "log.utilisation=false", "log.progress=off", "train.eval_every=5"]


@pytest.mark.parametrize(
    ("name", "cfg", "classes"),
    [
        ("digits", None, [str(i) for i in range(10)]),  # multiclass: the argmax
        ("bc", CONFIGS / "breast_cancer_mlp.yaml", ["malignant", "benign"]),  # binary: one logit, > 0
    ],
)
def test_the_test_split_has_a_confusion_matrix_and_per_class_accuracy(tmp_path, name, cfg, classes):
    summary = train(config.load(cfg, ["train.steps=12", *QUIET]), run_dir=str(tmp_path / name))
    test = summary["test"]
    matrix = test["confusion"]
    assert len(matrix) == len(classes) and all(len(row) == len(classes) for row in matrix)
    assert sum(map(sum, matrix)) == test["samples"]  # every test sample once
    right = sum(matrix[i][i] for i in range(len(classes)))
    assert right / test["samples"] == pytest.approx(test["accuracy"])  # the same predictions as the accuracy's
    assert list(test["per_class_accuracy"]) == classes
    for i, c in enumerate(classes):
        assert test["per_class_accuracy"][c] == pytest.approx(matrix[i][i] / sum(matrix[i]))
    run = tmp_path / name
    assert json.loads((run / "summary.json").read_text())["test"]["confusion"] == matrix
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "confusion" not in summary["val"]  # the test split's only
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("confusion" in r or "per_class_accuracy" in r for r in records)  # the records stay small
    assert [r["accuracy"] for r in records if r["split"] == "test"] == [test["accuracy"]]


def test_language_models_get_no_confusion_matrix(tmp_path):
    overrides = ["data.name=synthetic_tokens", "data.num_classes=16", "data.block_size=8", "data.samples=64",
                 "model.name=gpt", "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "train.steps=2",
                 *QUIET]  # fmt: skip
    summary = train(config.load(None, overrides), run_dir=str(tmp_path / "lm"))
    assert "confusion" not in summary["test"] and "accuracy" in summary["test"]
    assert not (tmp_path / "lm" / "confusion.png").exists()
