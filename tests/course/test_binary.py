"""Two-class models have one logit (a binary task): explain, export and predict must not assume two."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hpc_dl import config
from hpc_dl.course import explain, export
from hpc_dl.errors import UserError
from hpc_dl.training.run import train
from tests.conftest import run_cli
from tests.course.conftest import QUIET

pytestmark = pytest.mark.slow


def _image_folder(root, per_class=(6, 3)):
    """root/{train,val}/{cat,dog}/*.png, 20x20: cats a bright square on dark, dogs dark on bright."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for name, (back, front) in {"cat": (30, 220), "dog": (220, 30)}.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((20, 20, 3), back, dtype=np.int16) + rng.integers(-20, 20, (20, 20, 3))
                pixels[6:14, 6:14] = front
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def _train(where, *extra):
    """A small CNN on a two-class ImageFolder: one logit, that of 'dog' (the second class)."""
    data = _image_folder(where / "pets")
    overrides = ["model.name=cnn", "model.channels=[8]", "model.hidden=16", "data.name=imagefolder",
                 f"data.root={data}", "data.image_size=16", "data.batch_size=4", "train.steps=3"]  # fmt: skip
    train(config.load(None, [*overrides, *extra, *QUIET]), str(where / "run"))
    return where / "run"


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("binary"))


def test_explain_a_binary_image_model_explains_its_one_logit(binary_run):
    proc = run_cli("explain", binary_run, "--images", "2", "--background", "4", "--no-wandb", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "explains the logit of class dog" in proc.stdout
    out = binary_run / "explain"
    values = np.load(out / "shap_values.npz")["values"]
    assert values.shape == (2, 3, 16, 16, 1)  # images, channels, H, W, the one logit
    result = json.loads((out / "shap.json").read_text())
    assert result["explained_classes"] == [["dog"], ["dog"]] and result["output"] == "logit of class dog"
    predictor, _, splits = export.build(binary_run)
    x = torch.stack([splits.test[i][0] for i in result["test_indices"]])
    with torch.no_grad():
        logits = predictor.model(x).numpy()
    np.testing.assert_allclose(result["logits"], logits, rtol=1e-5, atol=1e-6)


def test_the_first_class_of_a_binary_image_model_is_the_negated_logit(binary_run):
    dog = np.load(explain.explain(binary_run, images=2, background=4, say=lambda _: None)[1])["values"]
    files = explain.explain(binary_run, images=2, background=4, chosen="cat")
    np.testing.assert_allclose(np.load(files[1])["values"], -dog, rtol=1e-5, atol=1e-7)  # same samples, rseed
    assert json.loads(files[2].read_text())["explained_classes"] == [["cat"], ["cat"]]
    with pytest.raises(UserError, match=r"--class bird: not a class of this model \(cat, dog\)"):
        explain.explain(binary_run, chosen="bird")


def test_explain_a_model_augmented_on_the_device(tmp_path):
    """Its splits hand out bytes, which the device normalises: explain gave the model bytes."""
    run = _train(tmp_path, "data.augment.on_device=true")
    files = explain.explain(run, images=2, background=4, say=lambda _: None)
    assert np.load(files[1])["values"].shape == (2, 3, 16, 16, 1)


def test_export_and_predict_give_both_classes_of_a_binary_image_model(binary_run):
    files = export.export(binary_run, onnx=False)
    meta = json.loads(files[-1].read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["training_images"]["images"] == 12
    program = torch.export.load(files[0]).module()
    image = binary_run.parent / "pets" / "val" / "dog" / "0.png"
    proc = run_cli("predict", binary_run, image, "--json")
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [c for c, _ in row["top"]] in (["cat", "dog"], ["dog", "cat"]) and row["warnings"] == []
    assert sum(p for _, p in row["top"]) == pytest.approx(1, abs=1e-5) and "warning" not in proc.stderr
    x = torch.from_numpy(np.asarray(Image.open(image).resize((18, 18), Image.BILINEAR))).permute(2, 0, 1)[None]
    with torch.no_grad():
        p = program(x[..., 1:17, 1:17].float() / 255)  # the program takes [0, 1] images at the model's size
    assert p.shape == (1, 2) and float(p.sum()) == pytest.approx(1, abs=1e-5)


def test_a_binary_table_model_explains_the_class_asked_for(bc_run):
    other = json.loads(explain.explain(bc_run, samples=8, background=20)[0].read_text())  # P(benign)
    files = explain.explain(bc_run, samples=8, background=20, chosen="malignant")
    assert "beeswarm_malignant.png" in {f.name for f in files}
    got = json.loads(files[0].read_text())
    assert got["classes"] == ["malignant"] and other["classes"] == ["benign"]
    values, base, predicted = np.array(got["values"][0]), np.array(got["base_values"])[:, 0], got["predictions"]
    np.testing.assert_allclose(base + values.sum(axis=1), np.array(predicted)[:, 0], atol=1e-6)
    np.testing.assert_allclose(np.array(predicted)[:, 0], 1 - np.array(other["predictions"])[:, 0], atol=1e-6)
