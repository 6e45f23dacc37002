"""PNG plots of the training curves, drawn from metrics.jsonl after the run."""

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its inline figures
    matplotlib.use("Agg")  # no display on compute nodes
import matplotlib.pyplot as plt  # noqa: E402

# classification (and language models) trains on cross-entropy, regression on the MSE of the standardised target
LABELS = {"loss": "loss (cross-entropy, nats)", "accuracy": "accuracy", "rmse": "RMSE (in the target's units)"}
REGRESSION_LOSS = "loss (MSE of the standardised target)"
NAMES = {"rmse": "RMSE"}  # a metric's name in a title


def _plain(**kwargs):
    """matplotlib's choice of which log ticks to label, written as plain numbers (0.01, not 1e-02)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:.3g}" if super().__call__(x, pos) else ""

    return Plain(**kwargs)


def curve_figure(records: list[dict], metric: str, run_name: str):
    """One metric over the optimizer steps: training (per log window) and validation curves, the
    test result as a point at its step, and a title naming the run; None when nothing has it."""
    series = {}
    for r in records:
        if metric in r:
            series.setdefault(r["split"], []).append((r["step"], r[metric]))
    test = series.pop("test", [])[-1:]  # one point at the end of the run
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for split, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=split)
    title = run_name
    if test:
        ((step, value),) = test
        ax.plot([step], [value], "k*", markersize=11, label=f"test {value:.4g}")
        title += f" (test {NAMES.get(metric, metric)} {value:.4g} at step {step})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimizer step")
    regression = any("rmse" in r for r in records)
    ax.set_ylabel(REGRESSION_LOSS if metric == "loss" and regression else LABELS.get(metric, metric))
    values = [v for pts in [*series.values(), test] for _, v in pts]
    if metric == "loss" and all(v > 0 for v in values):
        ax.set_yscale("log")
        # plain numbers (0.1, 1, and 2, 3 ... within a decade) where matplotlib writes 10^-1 or nothing
        ax.yaxis.set_major_formatter(_plain(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(_plain(labelOnlyBase=False))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """loss.png and accuracy.png (regression: rmse.png) of the run in ``out_dir`` (its folder name
    titles them)."""
    written = []
    for metric in ("loss", "accuracy", "rmse"):
        fig = curve_figure(records, metric, Path(out_dir).name)
        if fig is None:
            continue
        path = Path(out_dir) / f"{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def confusion_figure(confusion: list[list[int]], class_names: list[str], run_name: str, accuracy: float | None):
    """The test split's confusion matrix (rows the true class, columns the predicted one; counts
    written in the cells up to 20 classes, class names as tick labels up to 30) beside each class's
    accuracy (its recall: the diagonal over the row), titled with the run and its test accuracy."""
    import numpy as np

    matrix = np.asarray(confusion, dtype=np.int64)
    c = len(matrix)
    names = class_names if len(class_names) == c else [str(i) for i in range(c)]
    rows = matrix.sum(1)
    recall = np.divide(matrix.diagonal(), rows, out=np.full(c, np.nan), where=rows > 0)
    side = min(max(4.0, 0.45 * c + 2), 16.0)
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(side + 3, side), dpi=100, width_ratios=[side, 3], sharey=True)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, aspect="auto")  # rows level with the bars beside
    if c <= 20:  # the counts, readable on light and dark cells
        for (i, j), n in np.ndenumerate(matrix):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=9,
                    color="white" if n > matrix.max() / 2 else "black")  # fmt: skip
    if c <= 30:
        ax.set_xticks(range(c), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
        ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="test samples")
    bars.barh(range(c), np.nan_to_num(recall), color="lightsteelblue")
    if c <= 20:  # as a percentage; "-" for a class the test split does not have
        for i, r in enumerate(recall):
            bars.text(0.03, i, "-" if np.isnan(r) else f"{r:.0%}", va="center", fontsize=9)
    bars.set_xlim(0, 1)
    bars.set_xlabel("per-class accuracy")
    bars.tick_params(labelleft=False)
    result = f" (test accuracy {accuracy:.4g})" if accuracy is not None else ""
    fig.suptitle(f"{run_name}: confusion matrix on the test split{result}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_confusion(test: dict, out_dir: Path) -> Path | None:
    """confusion.png in ``out_dir`` from a run's test result (summary.json's ``test``), when it has
    a confusion matrix (classification runs)."""
    if not test.get("confusion"):
        return None
    names = list(test.get("per_class_accuracy") or {})
    fig = confusion_figure(test["confusion"], names, Path(out_dir).name, test.get("accuracy"))
    path = Path(out_dir) / "confusion.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def device_axis(ax, points: list[tuple[int, int]]) -> None:
    """A log2 x axis of devices whose ticks also say the nodes (a cluster user thinks in nodes):
    ``points`` are (devices, nodes) pairs; each tick reads '16 GPUs' over '2 nodes'."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(points))
    ax.set_xticks([d for d, _ in ticks], [f"{d}\n{n} node{'s' if n != 1 else ''}" for d, n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("devices (nodes)")
