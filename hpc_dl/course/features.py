"""``hpc-dl features RUN_DIR``: what a trained CNN's first convolution looks at (Zeiler & Fergus, 2014).

``filters.png``: every filter (kernel) of the first Conv2d the forward pass runs, as a small image:
in colour when the layer reads 3 channels (RGB), in grey otherwise (the mean over the input channels
when there are neither 1 nor 3), each filter scaled to its own range (bright = large weight).

``feature_maps.png``: for a few test images (one per class where possible), the image as the model
sees it and that layer's activation maps for the channels most active on them: the conv's output
(before normalisation and activation) or, with ``activation``, the output of the first activation
module that runs after it (its ReLU, after BatchNorm). Each channel has one colour scale for all
images, so the rows compare. The figures are made by functions that return them (tests read them).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpc_dl.errors import UserError
from hpc_dl.telemetry.plots import plt
from hpc_dl.training.weights import load_run

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh,
               nn.Sigmoid)  # fmt: skip
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # a layer that would come between conv and activation


@dataclass
class FirstLayer:
    """The first Conv2d the forward pass runs, and what it and the activation after it gave."""

    name: str
    conv: nn.Conv2d
    maps: torch.Tensor  # (N, C, H, W): the conv's output
    activation: str | None = None  # "features.1 (BatchNorm2d), features.2 (ReLU)": up to its activation
    activated: torch.Tensor | None = None

    def describe(self) -> str:
        c = self.conv
        return (f"Conv2d {c.in_channels}->{c.out_channels}, kernel {c.kernel_size[0]}x{c.kernel_size[1]}, stride "
                f"{c.stride[0]}; weight {'x'.join(map(str, c.weight.shape))}")  # fmt: skip


def probe(model: nn.Module, x: torch.Tensor, what: str = "the model") -> FirstLayer:
    """Run ``x`` through ``model`` and catch the first Conv2d's output and the first activation after it
    (one that follows the conv before any other weighted layer). ``what`` names the model in errors."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise UserError(f"{what} has no Conv2d layer: features shows a CNN's first convolution "
                        "(e.g. model.name cnn, lenet5, resnet18)")  # fmt: skip
    seen: dict = {"between": []}

    def hook(name):
        def record(module, inputs, output):
            if "conv" not in seen:
                if isinstance(module, nn.Conv2d):  # clone: an in-place ReLU would change it
                    seen["conv"] = FirstLayer(name, module, output.detach().clone())
                return
            if "after" in seen:
                return
            if isinstance(module, WEIGHTED):
                seen["after"] = None  # another layer came first: no activation of this conv's own
                return
            seen["between"].append(f"{name} ({type(module).__name__})")
            if isinstance(module, ACTIVATIONS):
                seen["after"] = (", ".join(seen["between"]), output.detach().clone())

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    first = seen["conv"]
    if seen.get("after"):
        first.activation, first.activated = seen["after"]
    return first


def _unit(a: np.ndarray, axes) -> np.ndarray:
    """Scaled to [0, 1] over ``axes`` (each filter, image or channel on its own range)."""
    lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-12)


def _as_picture(chw: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(H, W, 3) for 3 channels, else (H, W) in grey (the channels' mean); and the colour map."""
    if chw.shape[0] == 3:
        return chw.transpose(1, 2, 0), None
    return chw.mean(axis=0), "gray"


def filters_figure(weight: torch.Tensor, title: str):
    """Each filter of a conv layer's ``weight`` (out, in, kh, kw) as a small image in a grid."""
    w = weight.detach().float().cpu().numpy()
    w = _unit(w, axes=(1, 2, 3))  # each filter on its own range
    n, cin = w.shape[:2]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.5, 0.75 * cols + 1), 0.75 * rows + 1.2), dpi=100,
                             layout="constrained", squeeze=False)  # fmt: skip
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            picture, cmap = _as_picture(w[i])
            ax.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(str(i), fontsize=6, pad=2)
    colour = "RGB" if cin == 3 else "grey" if cin == 1 else f"grey: the mean over its {cin} input channels"
    fig.suptitle(f"{title}\n{n} filters, each scaled to its own range ({colour})", fontsize=9)
    return fig


def feature_maps_figure(images: torch.Tensor, maps: torch.Tensor, channels: list[int], labels: list[str],
                        title: str):  # fmt: skip
    """One row per image: the image (first column), then its activation map of each of ``channels``
    (one colour scale per channel across the images)."""
    pictures = _unit(images.detach().float().cpu().numpy(), axes=(1, 2, 3))
    shown = _unit(maps.detach().float().cpu().numpy()[:, channels], axes=(0, 2, 3))
    n, k = len(pictures), len(channels)
    fig, axes = plt.subplots(n, k + 1, figsize=(max(5.0, 0.95 * (k + 1) + 0.5), 1.05 * n + 1.1), dpi=100,
                             layout="constrained", squeeze=False)  # fmt: skip
    for r in range(n):
        picture, cmap = _as_picture(pictures[r])
        axes[r, 0].imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[r, 0].set_title(labels[r], fontsize=7, pad=2)
        for j, c in enumerate(channels):
            axes[r, j + 1].imshow(shown[r, j], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                axes[r, j + 1].set_title(f"channel {c}", fontsize=7, pad=2)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def _test_images(splits, n: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` test images, one per class where possible (from the first images of the split), as
    evaluation sees them (normalised when the device augments), and their labels."""
    test = splits.test
    labels = [int(test[i][1]) for i in range(min(len(test), 50 * n))]
    picked = list(dict.fromkeys(labels))[:n]  # first appearance of each class
    chosen = [labels.index(c) for c in picked]
    chosen += [i for i in range(len(labels)) if i not in chosen][: n - len(chosen)]
    x = torch.stack([test[i][0] for i in sorted(chosen)])
    prepare = splits.batch_transform or (lambda batch, train: batch)
    return prepare(x, False), [labels[i] for i in sorted(chosen)]


def figures(run_dir, images: int = 4, channels: int = 8, activation: bool = False) -> dict:
    """{"filters.png": Figure, "feature_maps.png": Figure} of the run's first conv layer."""
    if images < 1:
        raise UserError(f"--images {images}: must be at least 1")
    if not 1 <= channels <= 16:
        raise UserError(f"--channels {channels}: from 1 to 16 (a row stays readable)")
    cfg, splits, model, _ = load_run(run_dir)
    if len(splits.spec.input_shape) != 3:
        raise UserError(f"{run_dir}: model '{cfg.model.name}' on {cfg.data.name} takes no images: features shows "
                        "a CNN's first convolution")  # fmt: skip
    x, labels = _test_images(splits, images)
    first = probe(model, x, what=f"{run_dir}: model '{cfg.model.name}'")
    maps, stage = first.maps, f"output of {first.name}, before any normalisation or activation"
    if activation and first.activated is not None:
        maps, stage = first.activated, f"after {first.name}, then {first.activation}"
    elif activation:
        stage += f" (no activation module follows {first.name})"
    strongest = maps.abs().mean(dim=(0, 2, 3)).argsort(descending=True)[: min(channels, maps.shape[1])]
    names = splits.spec.class_names or [str(i) for i in range(splits.spec.num_classes)]
    run = f"{cfg.model.name} on {cfg.data.name}"
    return {
        "filters.png": filters_figure(first.conv.weight, f"{run}: first conv layer {first.name}\n{first.describe()}"),
        "feature_maps.png": feature_maps_figure(
            x, maps, sorted(strongest.tolist()), [f"true: {names[y]}" for y in labels],
            f"{run}: feature maps of {first.name} ({maps.shape[1]} channels of {maps.shape[2]}x{maps.shape[3]}) for "
            f"{len(x)} test images\n{stage}\nits {len(strongest)} most active channels, each on one scale",
        ),
    }  # fmt: skip


def features(run_dir, images: int = 4, channels: int = 8, activation: bool = False, out=None) -> list[Path]:
    """Write ``filters.png`` and ``feature_maps.png`` of the run's first conv layer into ``out``
    (default RUN_DIR/features/); returns the files."""
    made = figures(run_dir, images, channels, activation)
    out = Path(out) if out else Path(run_dir) / "features"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        for fig in made.values():
            plt.close(fig)
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    files = []
    for name, fig in made.items():
        files.append(out / name)
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files
