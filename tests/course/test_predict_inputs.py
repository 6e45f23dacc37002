"""`hpc-dl predict` warns about an image unlike the training images: inverted, or of little contrast."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from hpc_dl import config, data
from hpc_dl.course import export, predict
from hpc_dl.data import bundled
from tests.conftest import run_cli
from tests.course.conftest import raw_test_split


def test_the_rule_on_every_bundled_digit():
    splits = data.build(config.load(None, []).data)
    identity = export.Predictor(torch.nn.Identity(), False, {"kind": "image"}, splits.spec.preprocessing)
    stats = export.training_images(identity, splits)
    assert stats["border_mean"] < stats["mean"] and stats["min_span"] > 0.8  # light strokes on black, 0 to 1
    images = torch.as_tensor(bundled.digits()[0], dtype=torch.float32)[:, None] / 16
    names = [f"{i}.png" for i in range(len(images))]

    def flagged(x, word):
        return sum(any(word in line for line in lines) for lines in predict.unlike_training(x, names, stats))

    assert flagged(images, "") == 0  # no warning for any of the 1797 as they are
    assert flagged(1 - images, "looks inverted") >= 0.99 * len(images)  # 1795 of 1797
    assert flagged(images * 16 / 255, "has intensities from 0.00 to 0.0") == len(images)  # saved as 0..16
    assert predict.unlike_training(1 - images[:1], names[:1], None) == [[]]  # no statistics: no warning


@pytest.mark.slow
def test_predict_warns_about_an_inverted_drawing(digits_run, tmp_path):
    raw, _ = raw_test_split(digits_run)
    paths = {}
    for name, pixels in {"dark_on_light": 1 - raw[0, 0], "light_on_dark": raw[0, 0], "faint": raw[0, 0] / 16}.items():
        paths[name] = tmp_path / f"{name}.png"  # drawn larger than the model's 8x8, as a user would
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).resize((32, 32), Image.BICUBIC).save(paths[name])
    meta = json.loads(export.export(digits_run, onnx=False)[-1].read_text())
    assert meta["training_images"]["border_mean"] < meta["training_images"]["mean"]

    proc = run_cli("predict", digits_run, *paths.values(), "--top-k", "1")
    inverted, faint = proc.stderr.strip().splitlines()  # none for light_on_dark.png
    assert inverted == (
        "warning: dark_on_light.png looks inverted (dark strokes on a light background; the model was trained on "
        "light strokes on a dark background): predictions are unreliable; invert it"
    )
    assert re.fullmatch(  # the training images' range is that of the 16x16 images the model was trained on
        r"warning: faint.png has intensities from 0.00 to 0.0\d \(0 black, 1 white\); the model was trained on "
        r"images from 0.00 to 0.98: predictions are unreliable; stretch its contrast to that range", faint
    )  # fmt: skip
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == [p.name for p in paths.values()]  # answered

    # an export written before the statistics were: no warning, no crash
    meta_path = digits_run / "export" / export.META
    written = meta_path.read_text()
    try:
        meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "training_images"}))
        proc = run_cli("predict", digits_run, paths["dark_on_light"], "--json")
        assert json.loads(proc.stdout)["warnings"] == [] and proc.stderr == ""
    finally:
        meta_path.write_text(written)
