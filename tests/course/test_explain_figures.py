"""The SHAP image overlays say what they explain, and their titles do not cover the images (issue 18).

Checked with matplotlib's renderer: after drawing, no title (the figure's or a panel's) or colour-bar
label intersects any image, and every text lies inside the figure (nothing cut off)."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from hpc_dl.course.explain import image_figure
from hpc_dl.telemetry.plots import plt

DIGITS = [str(i) for i in range(10)]


def overlaps(fig) -> list[str]:
    """What is wrong with the figure's layout once drawn: texts over images, or outside the figure."""
    if not hasattr(fig.canvas, "get_renderer"):  # a figure pyplot has closed (after it was saved)
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    images = [(ax, im.get_window_extent(renderer)) for ax in fig.axes for im in ax.images]
    texts = [t for t in fig.texts if t.get_text()]  # the suptitle
    texts += [ax.title for ax in fig.axes if ax.get_title()]
    texts += [ax.xaxis.label for ax in fig.axes if ax.get_xlabel()]  # the colour bar's label
    assert images and texts
    problems = []
    for text in texts:
        box = text.get_window_extent(renderer)
        problems += [f"{text.get_text()!r} covers an image of {ax.get_title()!r}" for ax, image in images
                     if box.overlaps(image)]  # fmt: skip
        if not fig.bbox.padded(1).contains(box.x0, box.y0) or not fig.bbox.padded(1).contains(box.x1, box.y1):
            problems.append(f"{text.get_text()!r} is cut off by the figure's edge")
    return problems


def _figure(n=3, k=3, channels=3, classes=DIGITS, binary=False, one=None, output="logit", seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.random((n, channels, 16, 16)).astype(np.float32)
    values = rng.normal(size=(n, channels, 16, 16, k))
    explained = np.tile(np.arange(k), (n, 1)) if one is None else np.full((n, 1), one)
    probs = rng.dirichlet(np.ones(len(classes)), size=n)
    labels = [classes[i % len(classes)] for i in range(n)]
    fig = image_figure(pixels, values, explained, probs, labels, classes, "cnn on digits: expected gradients on "
                       "100 background images", binary=binary, one=one, output=output)  # fmt: skip
    return fig, probs


@pytest.mark.parametrize("n,k", [(1, 1), (3, 3), (4, 2), (2, 5)])
def test_titles_do_not_overlap_the_images(n, k):
    fig, _ = _figure(n=n, k=k)
    try:
        assert overlaps(fig) == []
    finally:
        plt.close(fig)


def test_the_top_classes_say_they_are_logits():
    fig, probs = _figure(n=2, k=2)
    try:
        assert fig.get_suptitle().splitlines()[0] == "SHAP values of the logits of each image's top 2 classes"
        panels = [ax.get_title() for ax in fig.axes if ax.images]
        assert panels[:3] == [
            "true: 0",
            f"logit of 0\nP(0) = {probs[0, 0]:.2f}",
            f"logit of 1\nP(1) = {probs[0, 1]:.2f}",
        ]
        (bar,) = [ax for ax in fig.axes if not ax.images]
        assert bar.get_xlabel().startswith("SHAP value: contribution to the logit of the class above it")
    finally:
        plt.close(fig)


@pytest.mark.parametrize("one,against", [(1, "cat"), (0, "dog")])
def test_a_binary_model_says_its_logit_is_log_odds(one, against):
    classes = ["cat", "dog"]
    fig, _ = _figure(n=2, k=1, channels=1, classes=classes, binary=True, one=one)
    try:
        c = classes[one]
        assert fig.get_suptitle().splitlines()[:2] == [f"SHAP values of the logit of {c}",
                                                       f"(the log-odds of {c} against {against})"]  # fmt: skip
        (bar,) = [ax for ax in fig.axes if not ax.images]
        assert bar.get_xlabel().startswith(f"SHAP value: contribution to the logit of {c}")
        assert overlaps(fig) == []
    finally:
        plt.close(fig)


def test_probabilities_are_named_as_such():
    fig, probs = _figure(n=1, k=1, one=7, output="probability")
    try:
        assert fig.get_suptitle().startswith("SHAP values of P(7)\n")
        assert [ax.get_title() for ax in fig.axes if ax.images][1] == f"P(7) = {probs[0, 7]:.2f}"
        (bar,) = [ax for ax in fig.axes if not ax.images]
        assert bar.get_xlabel().startswith("SHAP value: contribution to P(7)")
    finally:
        plt.close(fig)


def test_the_check_sees_a_title_over_an_image():
    """The rule itself: shap's own layout (a suptitle at the top of a figure without room for it) fails."""
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.zeros((4, 4)))
    fig.subplots_adjust(top=1.0)
    ax.set_title("a title")
    fig.suptitle("a long title over the image")
    try:
        assert any("covers an image" in p for p in overlaps(fig))
    finally:
        plt.close(fig)
