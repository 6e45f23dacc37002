"""PNG plots of the training curves, drawn from metrics.jsonl after the run."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on compute nodes
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """loss.png and accuracy.png: training (per log window) and validation curves."""
    written = []
    for metric, name in (("loss", "loss.png"), ("accuracy", "accuracy.png")):
        series = {}
        for r in records:
            if metric in r:
                series.setdefault(r["split"], []).append((r["step"], r[metric]))
        series.pop("test", None)  # a single point at the end; it is in summary.json
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for split, points in series.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=split)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric)
        if metric == "loss" and all(v > 0 for pts in series.values() for _, v in pts):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(out_dir) / name
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
