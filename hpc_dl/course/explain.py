"""``hpc-dl explain RUN_DIR``: SHAP explanations of a trained classifier, in ``RUN_DIR/explain/``.

Tables: a model-agnostic explainer (permutation, or kernel) on the exported predictor, so
features are explained in their own units (a radius in mm, not a z-score) and outputs as
class probabilities; a background sample of training rows stands for "feature unknown".
Both explainers are additive: base value + the values of a row = the model's output for it.
Files: shap.json and shap_values.csv (every value), beeswarm_<class>.png, bar_<class>.png.

Images: GradientExplainer (expected gradients; works with torchvision's ResNets, which
DeepExplainer does not) on the model's logits for each image's top-k classes; the values sum
to the logit minus its mean over the background only approximately. A binary model has one
logit, that of its second class (the log-odds of it against the first): that one is explained.
Files: images.png (each test image and its per-class overlays), shap_values.npz (the raw
values), shap.json.

``chosen`` (``--class``) explains one class only: its probability (tables) or its logit
(images; for a binary model's first class, the negated logit).
"""

import json
from pathlib import Path

import numpy as np
import shap
import torch
from torch import nn

from hpc_dl import config
from hpc_dl.course import export
from hpc_dl.errors import UserError
from hpc_dl.fileio import write_json
from hpc_dl.telemetry.plots import plt


def _stack(dataset, indices) -> torch.Tensor:
    return torch.stack([dataset[int(i)][0] for i in indices])


def _pick(n_total: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, min(n, n_total), replace=False))


def explain(run_dir, samples=100, background=100, method="permutation", images=4, top_k=3, seed=0,
            chosen=None, say=print) -> list[Path]:  # fmt: skip
    """Explain the run's model on test samples; returns the files written."""
    predictor, meta, splits = export.build(run_dir)
    classes = meta["classes"]
    if chosen is not None and chosen not in classes:
        raise UserError(f"--class {chosen}: not a class of this model ({', '.join(classes[:20])})")
    out = Path(run_dir) / "explain"
    out.mkdir(exist_ok=True)
    if meta["inputs"]["kind"] == "table":
        return _tables(predictor, meta, splits, out, samples, background, method, seed, chosen)
    if predictor.binary and chosen is None:
        say(f"a binary model (one logit): explains the logit of class {classes[1]} (its log-odds against {classes[0]})")
    return _images(predictor.model, predictor.binary, meta, splits, out, images, background, top_k, seed, chosen)


def _tables(predictor, meta, splits, out: Path, samples, background, method, seed, chosen) -> list[Path]:
    ins = meta["inputs"]
    names = ins["numeric"] + [f"{c}={v}" for c, vals in ins["categorical"].items() for v in vals]

    def raw(dataset, n, s):  # undo the data set's scaling: explain in the features' own units
        x = _stack(dataset, _pick(len(dataset), n, s))
        return (x * predictor.scale + predictor.shift).numpy().astype(np.float64)

    bg, x = raw(splits.train, background, seed), raw(splits.test, samples, seed + 1)
    classes, regression = meta["classes"], meta.get("task") == "regression"
    if chosen is not None:
        outputs = [classes.index(chosen)]
    else:  # of two classes, P(second class) says it all
        outputs = [1] if len(classes) == 2 else list(range(len(classes)))

    def f(a):
        with torch.no_grad():
            return predictor(torch.as_tensor(a, dtype=torch.float32)).double().numpy()[:, outputs]

    if method == "permutation":
        explainer = shap.PermutationExplainer(f, shap.maskers.Independent(bg, max_samples=len(bg)), seed=seed)
        e = explainer(x, silent=True)  # no tqdm bar in Slurm logs
        values, base = e.values, e.base_values
    elif method == "kernel":
        explainer = shap.KernelExplainer(f, bg)
        values = np.asarray(explainer.shap_values(x, silent=True))
        base = np.broadcast_to(np.asarray(explainer.expected_value), (len(x), len(outputs)))
    else:
        raise UserError(f"--method {method}: permutation or kernel")
    values = values.reshape(len(x), len(names), len(outputs))
    base = np.asarray(base).reshape(len(x), len(outputs))
    predicted = f(x)

    files = [out / "shap.json", out / "shap_values.csv"]
    write_json(files[0], {
        "method": method, "model": meta["model"], "data": meta["data"],
        "output": "prediction (in the target's units)" if regression else "class probability",
        "classes": [classes[o] for o in outputs], "features": names, "background_rows": len(bg),
        "data_rows": x.tolist(), "base_values": base.tolist(), "predictions": predicted.tolist(),
        "values": values.transpose(2, 0, 1).tolist(),  # [class][row][feature]
    })  # fmt: skip
    header = "row,class,base_value,prediction," + ",".join(f'"{n}"' for n in names)
    lines = [
        f"{i},{classes[o]},{base[i, k]:.9g},{predicted[i, k]:.9g}," + ",".join(f"{v:.9g}" for v in values[i, :, k])
        for k, o in enumerate(outputs)
        for i in range(len(x))
    ]
    files[1].write_text("\n".join([header, *lines]) + "\n")
    for k, o in enumerate(outputs):
        e = shap.Explanation(values[:, :, k], base[:, k], data=x, feature_names=names)
        for kind, plot in (("beeswarm", shap.plots.beeswarm), ("bar", shap.plots.bar)):
            plot(e, max_display=15, show=False)
            fig = plt.gcf()
            what = f"the predicted {classes[o]}" if regression else f"P({classes[o]})"
            fig.suptitle(f"SHAP values for {what}, {meta['model']} on {meta['data']} ({method})")
            files.append(out / f"{kind}_{classes[o]}.png")
            fig.savefig(files[-1], dpi=110, bbox_inches="tight")
            plt.close(fig)
    return files


class _Logit(nn.Module):
    """One class's logit: a column of the model's, or for a binary model its one logit, negated
    for the first class (log-odds of the first class against the second)."""

    def __init__(self, model: nn.Module, binary: bool, c: int):
        super().__init__()
        self.model, self.column, self.sign = model, 0 if binary else c, -1.0 if binary and c == 0 else 1.0

    def forward(self, x):
        return self.sign * self.model(x)[:, self.column : self.column + 1]


def _images(model, binary, meta, splits, out: Path, n_images, background, top_k, seed, chosen) -> list[Path]:
    # as evaluation sees them: not augmented (the background would change from run to run), and
    # normalised when the device augments (the splits hand out bytes)
    prepare = splits.batch_transform or (lambda x, train: x)
    train = export.unaugmented_train(splits)
    bg = prepare(_stack(train, _pick(len(train), background, seed)), False)
    picked = _pick(len(splits.test), n_images, seed + 1)
    x = prepare(_stack(splits.test, picked), False)
    labels = [int(splits.test[int(i)][1]) for i in picked]
    classes = meta["classes"]
    one = classes.index(chosen) if chosen is not None else 1 if binary else None  # the one class explained
    net = model if one is None else _Logit(model, binary, one)
    k = 1 if one is not None else min(top_k, len(classes))
    explainer = shap.GradientExplainer(net, bg)
    values, ranked = explainer.shap_values(x, ranked_outputs=k, nsamples=200, rseed=seed)
    values, ranked = np.asarray(values), np.asarray(ranked)  # (N, C, H, W, k), (N, k): outputs of net
    with torch.no_grad():
        outputs, base = net(x).float().numpy(), net(bg).float().mean(0).numpy()
        probs = export.probabilities(model(x).float(), binary).numpy()
    explained = ranked if one is None else np.full_like(ranked, one)  # the class of each explained output

    pixels = x.numpy()
    title = f"{meta['model']} on {meta['data']}: expected gradients on {len(bg)} background images"
    fig = image_figure(pixels, values, explained, probs, [classes[y] for y in labels], classes, title,
                       binary=binary, one=one)  # fmt: skip
    files = [out / "images.png", out / "shap_values.npz", out / "shap.json"]
    fig.savefig(files[0], dpi=110)
    plt.close(fig)
    np.savez_compressed(files[1], values=values, classes=explained, images=pixels, labels=np.array(labels),
                        test_indices=picked)  # fmt: skip
    write_json(files[2], {
        "method": "gradient", "model": meta["model"], "data": meta["data"],
        "output": "logit" if one is None else f"logit of class {classes[one]}",
        "test_indices": picked.tolist(), "labels": [classes[y] for y in labels],
        "explained_classes": [[classes[c] for c in row] for row in explained], "background_images": len(bg),
        "logits": np.take_along_axis(outputs, ranked, 1).tolist(), "background_mean_logits": base[ranked].tolist(),
        "value_sums": values.sum(axis=(1, 2, 3)).tolist(),
    })  # fmt: skip
    return files


def _of(c: str, output: str) -> str:
    """What a SHAP value is a contribution to: 'the logit of 3' or 'P(3)'."""
    return f"the logit of {c}" if output == "logit" else f"P({c})"


def image_figure(pixels: np.ndarray, values: np.ndarray, explained_classes: np.ndarray, probs: np.ndarray,
                 labels: list[str], classes: list[str], title: str, binary: bool = False, one: int | None = None,
                 output: str = "logit"):  # fmt: skip
    """The image overlays: one row per image, the image (its true class above it) and, for each class
    explained, the SHAP values summed over the colour channels over a faint copy of it (red raises
    the output, blue lowers it; one symmetric scale for the figure, a colour bar below). ``pixels``
    (N, C, H, W), ``values`` (N, C, H, W, k), ``explained_classes`` (N, k): class indices; ``output``
    "logit" (what GradientExplainer explains here) or "probability". Titles say what is explained."""
    n, k = values.shape[0], values.shape[-1]
    lo, hi = pixels.min(axis=(1, 2, 3), keepdims=True), pixels.max(axis=(1, 2, 3), keepdims=True)
    shown = ((pixels - lo) / np.maximum(hi - lo, 1e-12)).transpose(0, 2, 3, 1)  # normalised -> [0, 1] for display
    gray = shown.mean(axis=-1)
    summed = values.sum(axis=1)  # (N, H, W, k)
    vmax = float(np.nanpercentile(np.abs(summed), 99.9)) or 1e-12
    fig, axes = plt.subplots(n, k + 1, figsize=(max(6.0, 1.9 * (k + 1) + 0.6), 1.9 * n + 2.2), dpi=100,
                             layout="constrained", squeeze=False)  # fmt: skip
    fig.get_layout_engine().set(w_pad=0.1, h_pad=0.1)  # inches around each panel and the figure's edge
    for r in range(n):
        axes[r, 0].imshow(shown[r] if shown.shape[-1] == 3 else gray[r], cmap=None if shown.shape[-1] == 3 else "gray")
        axes[r, 0].set_title(f"true: {labels[r]}", fontsize=8)
        for j in range(k):
            c = int(explained_classes[r, j])
            ax = axes[r, j + 1]
            ax.imshow(gray[r], cmap="gray", alpha=0.15)
            im = ax.imshow(summed[r, ..., j], cmap=shap.plots.colors.red_transparent_blue, vmin=-vmax, vmax=vmax)
            chance = f"P({classes[c]}) = {probs[r, c]:.2f}"
            ax.set_title(f"logit of {classes[c]}\n{chance}" if output == "logit" else chance, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if one is None:
        plural = {"logit": "logits", "probability": "probabilities"}[output] if k > 1 else output
        what = f"the {plural} of each image's " + (f"top {k} classes" if k > 1 else "top class")
    elif binary and output == "logit":  # the one logit, or its negative: log-odds
        what = f"{_of(classes[one], output)}\n(the log-odds of {classes[one]} against {classes[1 - one]})"
    else:
        what = _of(classes[one], output)
    fig.suptitle(f"SHAP values of {what}\n{title}", fontsize=10)
    bar = fig.colorbar(im, ax=axes.ravel().tolist(), location="bottom", shrink=0.6, aspect=30)  # centred
    target = _of(classes[one], output) if one is not None else f"the {output} of the class above it"
    bar.set_label(f"SHAP value: contribution to {target}\n(red raises it, blue lowers it)", fontsize=8)
    return fig


def log_to_wandb(run_dir, files: list[Path], say=print) -> None:
    """Add the plots to the run's own W&B run (same id), when the run logged to W&B."""
    from hpc_dl.telemetry.wandb_run import WandbRun

    cfg = config.load(Path(run_dir) / "config.yaml")
    if not cfg.log.wandb:
        return
    env = Path(run_dir) / "env.json"
    manifest = json.loads(env.read_text()) if env.is_file() else {}
    dashboard = WandbRun.start(cfg, Path(run_dir), manifest, say=say)
    if dashboard:
        dashboard.finish(None, [f for f in files if f.suffix == ".png"], say=say, section="explain")
