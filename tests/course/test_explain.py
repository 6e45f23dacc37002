"""`hpc-dl explain`: SHAP values that add up, plots that open, the run's W&B run gets them."""

import json

import matplotlib.image
import numpy as np
import pytest
import torch

from hpc_dl import config
from hpc_dl.course import explain, export
from hpc_dl.training.run import train
from tests.conftest import CONFIGS, run_cli
from tests.course.conftest import QUIET
from tests.course.test_explain_figures import overlaps
from tests.telemetry.test_wandb import inspect

pytestmark = pytest.mark.slow


def _readable_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100 and image.std() > 0  # a picture, not a blank
    return image


@pytest.mark.parametrize("method,samples", [("permutation", 40), ("kernel", 8)])
def test_tabular_values_add_up_to_the_model_output(bc_run, method, samples):
    files = explain.explain(bc_run, samples=samples, background=50, method=method)
    out = bc_run / "explain"
    assert {f.name for f in files} == {"shap.json", "shap_values.csv", "beeswarm_benign.png", "bar_benign.png"}
    result = json.loads((out / "shap.json").read_text())
    values = np.array(result["values"][0])  # P(benign), one row per sample, one column per feature
    base, predicted = np.array(result["base_values"])[:, 0], np.array(result["predictions"])[:, 0]
    assert values.shape == (samples, 30) and result["classes"] == ["benign"]
    np.testing.assert_allclose(base + values.sum(axis=1), predicted, atol=1e-6)  # both explainers guarantee it

    # the explained output is the trained model's probability on those rows, in the features' own units
    predictor, meta, _ = export.build(bc_run)
    with torch.no_grad():
        p = predictor(torch.tensor(result["data_rows"], dtype=torch.float32))[:, 1].numpy()
    np.testing.assert_allclose(predicted, p, atol=1e-6)
    assert result["features"][0] == "mean radius" and np.array(result["data_rows"])[:, 0].max() > 5  # mm, not z

    lines = (out / "shap_values.csv").read_text().splitlines()
    assert len(lines) == samples + 1 and lines[0].startswith('row,class,base_value,prediction,"mean radius"')
    assert float(lines[1].split(",")[4]) == pytest.approx(values[0, 0], rel=1e-6)
    for name in ("beeswarm_benign.png", "bar_benign.png"):
        _readable_png(out / name)


def test_image_explanations_for_a_small_cnn(digits_run):
    files = explain.explain(digits_run, images=3, background=32, top_k=2)
    assert [f.name for f in files] == ["images.png", "shap_values.npz", "shap.json"]
    _readable_png(files[0])
    saved = np.load(files[1])
    assert saved["values"].shape == (3, 3, 16, 16, 2)  # images, channels, H, W, classes explained
    result = json.loads(files[2].read_text())
    logits = np.array(result["logits"])
    assert (logits[:, 0] >= logits[:, 1]).all()  # each image's top class first
    # expected gradients add up only approximately: the sums follow logit - mean background logit
    sums, gap = np.array(result["value_sums"]).ravel(), (logits - np.array(result["background_mean_logits"])).ravel()
    assert np.corrcoef(sums, gap)[0, 1] > 0.9


def test_the_image_overlays_say_what_they_explain_and_leave_the_images_clear(digits_run, monkeypatch):
    """The figure explain saves (images.png): its titles name the logits explained and cover no image."""
    real, made = explain.image_figure, []

    def keep(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(explain, "image_figure", keep)
    explain.explain(digits_run, images=2, background=16, top_k=2)
    (fig,) = made
    assert fig.get_suptitle().startswith("SHAP values of the logits of each image's top 2 classes\ncnn on digits")
    result = json.loads((digits_run / "explain" / "shap.json").read_text())
    panels = [ax.get_title() for ax in fig.axes if ax.images]
    assert panels[0] == f"true: {result['labels'][0]}"
    assert panels[1].startswith(f"logit of {result['explained_classes'][0][0]}\nP(")
    (bar,) = [ax for ax in fig.axes if not ax.images]
    assert bar.get_xlabel().startswith("SHAP value: contribution to the logit of the class above it")
    assert overlaps(fig) == []


def test_gradient_explainer_on_a_torchvision_resnet(tmp_path):
    run = tmp_path / "resnet"
    overrides = ["model.name=resnet18", "model.small_input=true", "data.image_size=32", "data.channels=3",
                 "data.classes=[0,1,2]", "train.steps=2", "data.batch_size=16", *QUIET]  # fmt: skip
    train(config.load(None, overrides), str(run))
    files = explain.explain(run, images=1, background=8, top_k=2)
    assert np.load(files[1])["values"].shape == (1, 3, 32, 32, 2)
    _readable_png(files[0])


def test_plots_go_to_the_runs_wandb_run(tmp_path):
    run, offline = tmp_path / "bc", {"WANDB_MODE": "offline"}
    run_cli("train", CONFIGS / "breast_cancer_mlp.yaml", "train.steps=30", "--run-dir", run, env=offline)
    proc = run_cli("explain", run, "--samples", "10", env=offline)
    assert "wrote" in proc.stdout and "wandb sync" in proc.stdout
    logged = inspect(run, summary=True)  # the newest offline run: explain's, with the same id
    assert logged["run_id"] == (run / "wandb_id").read_text().strip()
    image = logged["summary"]["explain/beeswarm_benign"]
    assert image["_type"] == "image-file"
    assert logged["summary"]["explain/bar_benign"]["_type"] == "image-file"


def test_explain_errors(tmp_path, bc_run):
    proc = run_cli("explain", tmp_path, check=False)
    assert proc.returncode == 2 and "not a run directory (no config.yaml)" in proc.stderr
    proc = run_cli("explain", bc_run, "--samples", "0", check=False)
    assert proc.returncode == 2 and "--samples 0: must be at least 1" in proc.stderr
