"""`hpc-dl features`: a CNN's first-layer filters and feature maps (the Zeiler & Fergus picture)."""

import matplotlib.image
import pytest
import torch
from torch import nn

from hpc_dl.course import features
from hpc_dl.errors import UserError
from hpc_dl.models.cnn import SmallCNN
from hpc_dl.telemetry.plots import plt
from tests.conftest import run_cli

slow = pytest.mark.slow  # the tests that train a run (the session's digits and breast-cancer runs)


def _images(fig) -> list:
    return [im for ax in fig.axes for im in ax.images]


def _close(figs: dict) -> None:
    for fig in figs.values():
        plt.close(fig)


@slow
def test_the_filters_and_maps_of_a_trained_cnn(digits_run):
    """digits_run: a CNN on 16x16 digits repeated to 3 channels, so its first layer has RGB filters."""
    figs = features.figures(digits_run, images=3, channels=4)
    try:
        filters, maps = figs["filters.png"], figs["feature_maps.png"]
        title = filters.get_suptitle()
        assert "cnn on digits: first conv layer features.0" in title
        assert "Conv2d 3->32, kernel 3x3" in title and "weight 32x3x3x3" in title and "(RGB)" in title
        shown = _images(filters)
        assert len(shown) == 32 and all(im.get_array().shape == (3, 3, 3) for im in shown)  # one RGB picture each
        for im in shown:  # each filter on its own range
            a = im.get_array()
            assert a.min() == pytest.approx(0) and a.max() == pytest.approx(1)

        title = maps.get_suptitle()
        assert "feature maps of features.0 (32 channels of 16x16) for 3 test images" in title
        assert "output of features.0, before any normalisation or activation" in title
        rows = [[ax for ax in maps.axes if ax.images and ax.get_subplotspec().rowspan.start == r] for r in range(3)]
        assert [len(r) for r in rows] == [5, 5, 5]  # the image, then 4 channels
        labels = [r[0].get_title() for r in rows]
        assert all(t.startswith("true: ") for t in labels) and len(set(labels)) == 3  # one image per class
        assert rows[0][0].images[0].get_array().shape == (16, 16, 3)  # the input in colour
        assert all(ax.get_title().startswith("channel ") for ax in rows[0][1:])
    finally:
        _close(figs)


@slow
def test_maps_after_the_activation(digits_run):
    figs = features.figures(digits_run, images=2, channels=16, activation=True)
    try:
        title = figs["feature_maps.png"].get_suptitle()
        assert "after features.0, then features.1 (BatchNorm2d), features.2 (ReLU)" in title
        assert "its 16 most active channels" in title
        maps = [im.get_array() for ax in figs["feature_maps.png"].axes if ax.get_title().startswith("channel")
                for im in ax.images]  # fmt: skip
        assert len(maps) == 16 and all(m.min() >= 0 for m in maps)
    finally:
        _close(figs)


@slow
def test_the_command_writes_two_pictures(digits_run, tmp_path):
    proc = run_cli("features", digits_run, "--images", "2", "--out", tmp_path / "f")
    assert proc.stdout.strip() == f"wrote {tmp_path}/f/filters.png, {tmp_path}/f/feature_maps.png"
    for name in ("filters.png", "feature_maps.png"):
        image = matplotlib.image.imread(tmp_path / "f" / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 200 and image.std() > 0


@slow
def test_the_default_folder_is_the_runs_features(digits_run):
    files = features.features(digits_run, images=1, channels=2)
    assert files == [digits_run / "features" / "filters.png", digits_run / "features" / "feature_maps.png"]
    assert all(f.stat().st_size > 5_000 for f in files)


def test_grey_filters_of_one_input_channel():
    conv = nn.Conv2d(1, 6, 5)
    fig = features.filters_figure(conv.weight, "lenet5 on digits: first conv layer features.0")
    try:
        shown = _images(fig)
        assert len(shown) == 6 and all(im.get_array().shape == (5, 5) for im in shown)
        assert all(im.get_cmap().name == "gray" for im in shown)
        assert "6 filters, each scaled to its own range (grey)" in fig.get_suptitle()
    finally:
        plt.close(fig)


def test_probe_finds_the_first_conv_and_its_activation():
    model = SmallCNN((1, 8, 8), 10, [4, 8], batch_norm=False).eval()  # conv, ReLU (in place), pool, ...
    x = torch.randn(2, 1, 8, 8)
    first = features.probe(model, x)
    assert first.name == "features.0" and first.maps.shape == (2, 4, 8, 8)
    assert first.activation == "features.1 (ReLU)"
    torch.testing.assert_close(first.activated, first.maps.clamp(min=0))  # the conv's output kept, not overwritten
    assert (first.maps < 0).any()

    no_activation = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.ReLU())  # the ReLU is the second's
    assert features.probe(no_activation, x).activation is None


def test_a_model_without_a_conv_layer_is_refused():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(UserError, match="model 'mlp' has no Conv2d layer"):
        features.probe(mlp, torch.randn(1, 1, 8, 8), what="model 'mlp'")


@slow
def test_an_mlp_run_is_refused_in_one_line(bc_run):
    proc = run_cli("features", bc_run, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "model 'mlp' on breast_cancer takes no images" in proc.stderr


@slow
def test_bad_counts(digits_run):
    with pytest.raises(UserError, match="--images 0: must be at least 1"):
        features.figures(digits_run, images=0)
    with pytest.raises(UserError, match="--channels 17: from 1 to 16"):
        features.figures(digits_run, channels=17)
