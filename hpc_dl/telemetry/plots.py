"""PNG plots of the training curves, drawn from metrics.jsonl after the run."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on compute nodes
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"loss": "loss (cross-entropy, nats)", "accuracy": "accuracy"}  # every task trains on cross-entropy


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
        title += f" (test {metric} {value:.4g} at step {step})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(LABELS.get(metric, metric))
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
    """loss.png and accuracy.png of the run in ``out_dir`` (its folder name titles them)."""
    written = []
    for metric in ("loss", "accuracy"):
        fig = curve_figure(records, metric, Path(out_dir).name)
        if fig is None:
            continue
        path = Path(out_dir) / f"{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def device_axis(ax, points: list[tuple[int, int]]) -> None:
    """A log2 x axis of devices whose ticks also say the nodes (a cluster user thinks in nodes):
    ``points`` are (devices, nodes) pairs; each tick reads '16 GPUs' over '2 nodes'."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(points))
    ax.set_xticks([d for d, _ in ticks], [f"{d}\n{n} node{'s' if n != 1 else ''}" for d, n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("devices (nodes)")
