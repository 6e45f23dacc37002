"""Gradient-descent playground: optimizers from hpc_dl's registry moving a point (x, y)
over a 2-D loss surface, with the trajectories drawn on the surface's contours.

Surfaces:
  quadratic   x^2 + 10 y^2: an ill-conditioned bowl, minimum at (0, 0)
  rosenbrock  (1 - x)^2 + 100 (y - x^2)^2: a curved narrow valley, minimum at (1, 1)
  saddle      x^2 / 2 + y^4 / 4 - y^2 / 2: a saddle at (0, 0) whose attracting axis is
              y = 0; minima at (0, -1) and (0, 1). Started exactly on the axis, gradient
              descent converges to the saddle; a little off it, it escapes to a minimum.

Optimizers are the training registry's (``optim.name``: sgd, adam, adamw) built by the
same code the trainer uses, plus ``momentum`` and ``nesterov`` (SGD with momentum 0.9).
Each is written NAME or NAME@LR; without a rate each runs at its best on that surface
(DEFAULT_LR), so that a comparison compares optimizers, not one learning rate that suits
some of them (Adam at SGD's 0.001 barely moves on Rosenbrock and looks worst).
"""

import math
from dataclasses import dataclass

import torch

from hpc_dl.config import OptimConfig
from hpc_dl.errors import UserError
from hpc_dl.training.optim import build_optimizer


@dataclass(frozen=True)
class Surface:
    name: str
    minimum: tuple[float, float]  # a minimum (or, for the saddle, the saddle point)
    start: tuple[float, float]
    box: tuple[float, float, float, float]  # x0, x1, y0, y1 for the contour plot

    def __call__(self, x, y):
        if self.name == "quadratic":
            return x**2 + 10 * y**2
        if self.name == "rosenbrock":
            return (1 - x) ** 2 + 100 * (y - x**2) ** 2
        return x**2 / 2 + y**4 / 4 - y**2 / 2


SURFACES = {
    "quadratic": Surface("quadratic", (0.0, 0.0), (-2.0, 1.5), (-2.5, 2.5, -2.0, 2.0)),
    "rosenbrock": Surface("rosenbrock", (1.0, 1.0), (-1.5, 2.0), (-2.0, 2.0, -1.0, 3.0)),
    "saddle": Surface("saddle", (0.0, 0.0), (1.5, 1e-3), (-2.0, 2.0, -1.5, 1.5)),
}
OPTIMIZERS = {  # name -> OptimConfig fields (lr comes from NAME@LR or --lr)
    "sgd": {"name": "sgd", "momentum": 0.0},
    "momentum": {"name": "sgd", "momentum": 0.9},
    "nesterov": {"name": "sgd", "momentum": 0.9, "nesterov": True},
    "adam": {"name": "adam"},
    "adamw": {"name": "adamw"},
}


# Each optimizer's learning rate at its best in 2,000 steps from the surface's start: from a grid of
# 10^(k/4), the rate with the lowest final loss (ties: the fewest steps to within 1e-3 of the
# minimum's value), rounded to a round number that still converges (tests/course/test_gd.py).
DEFAULT_LR = {
    "quadratic": {"sgd": 0.05, "momentum": 0.03, "nesterov": 0.03, "adam": 0.5, "adamw": 0.5},
    "rosenbrock": {"sgd": 0.002, "momentum": 0.002, "nesterov": 0.001, "adam": 0.5, "adamw": 0.5},
    "saddle": {"sgd": 0.5, "momentum": 0.5, "nesterov": 0.5, "adam": 0.1, "adamw": 0.1},
}


def parse_optimizer(spec: str, lr: float | None, surface: str = "quadratic") -> tuple[str, float]:
    """NAME or NAME@LR -> (name, rate); without @LR, ``lr``, or else the optimizer's best on ``surface``."""
    name, _, rate = spec.partition("@")
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer {name!r}: choose from {', '.join(OPTIMIZERS)} (NAME or NAME@LR)")
    try:
        value = float(rate) if rate else (lr or DEFAULT_LR[surface][name])
    except ValueError:
        raise UserError(f"optimizer {spec!r}: the learning rate after @ is not a number") from None
    if not value > 0:
        raise UserError(f"optimizer {spec!r}: the learning rate must be > 0")
    return name, value


def descend(surface: Surface, optimizer: str, lr: float, start, steps: int) -> dict:
    """Run one optimizer; the trajectory (every point visited) and where it ended."""
    point = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    holder = torch.nn.Module()
    holder.point = point  # a 1-D parameter: no weight decay group, as biases in training
    cfg = OptimConfig(**{**OPTIMIZERS[optimizer], "lr": lr, "weight_decay": 0.0})
    opt = build_optimizer(holder, cfg, torch.device("cpu"))
    path, diverged = [tuple(point.tolist())], False
    for _ in range(steps):
        opt.zero_grad()
        loss = surface(point[0], point[1])
        loss.backward()
        opt.step()
        path.append(tuple(point.tolist()))
        diverged = not all(math.isfinite(v) and abs(v) < 1e6 for v in path[-1])
        if diverged:
            break  # the learning rate is too large for this surface
    x, y = path[-1]
    final = float(surface(torch.tensor(x), torch.tensor(y)))
    return {"optimizer": optimizer, "lr": lr, "start": list(start), "steps": len(path) - 1, "final": [x, y],
            "loss": final, "distance_to_minimum": math.dist((x, y), surface.minimum), "diverged": diverged,
            "path": [list(p) for p in path]}  # fmt: skip


def escape_step(path: list, threshold: float = 0.5) -> int | None:
    """The first step at which |y| exceeds ``threshold`` (off the saddle's attracting axis)."""
    return next((i for i, (_, y) in enumerate(path) if abs(y) > threshold), None)


FORMULAS = {"quadratic": "x² + 10y²", "rosenbrock": "(1 − x)² + 100(y − x²)²", "saddle": "x²/2 + y⁴/4 − y²/2"}


def figure(surface: Surface, runs: list[dict]):
    """The contours of the loss with a colour bar, each optimizer's path, the minimum (or saddle
    point) and, for a path that diverged, a cross where it left the plot's range."""
    import numpy as np

    from hpc_dl.telemetry.plots import plt

    x0, x1, y0, y1 = surface.box
    xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    zs = surface(torch.from_numpy(xs), torch.from_numpy(ys)).numpy()
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=100)
    levels = np.unique(np.quantile(zs, np.linspace(0.0, 0.95, 25)))  # dense where the surface is flat
    contours = ax.contour(xs, ys, zs, levels=levels, cmap="viridis", linewidths=0.7)
    fig.colorbar(contours, ax=ax, label=f"loss f(x, y) = {FORMULAS[surface.name]}")
    for run in runs:
        p = np.array([q for q in run["path"] if all(math.isfinite(v) for v in q)])
        label = f"{run['optimizer']} lr={run['lr']:g}"
        if run["diverged"]:
            label += f" (diverged at step {run['steps']})"
        (line,) = ax.plot(p[:, 0], p[:, 1], ".-", markersize=2, linewidth=1, label=label)
        if run["diverged"]:  # the last point in range, then off the plot
            inside = [q for q in p if x0 <= q[0] <= x1 and y0 <= q[1] <= y1] or [p[0]]
            ax.plot(*inside[-1], "x", color=line.get_color(), markersize=12, markeredgewidth=2.5)
    ax.plot(*surface.minimum, "k*", markersize=12, label="saddle point" if surface.name == "saddle" else "minimum")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    start = tuple(runs[0]["start"]) if runs else surface.start
    ax.set_title(f"{surface.name}: up to {max((r['steps'] for r in runs), default=0)} steps from {start}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(surface: Surface, runs: list[dict], path) -> None:
    from hpc_dl.telemetry.plots import plt

    fig = figure(surface, runs)
    fig.savefig(path)
    plt.close(fig)
