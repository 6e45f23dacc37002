"""Random data for benchmarks, generated once from a seed and held in memory (or on the
device with data.on_device), so the input pipeline costs nothing next to the model."""

import math

import psutil
import torch
from torch.utils.data import TensorDataset

from hpc_dl.data.spec import DataSpec, Splits
from hpc_dl.errors import ConfigError


def synthetic(cfg) -> Splits:
    g = torch.Generator().manual_seed(cfg.seed)
    sizes = (cfg.samples, max(1, cfg.samples // 4), max(1, cfg.samples // 4))
    _check_memory(cfg, sum(sizes))
    if cfg.name == "synthetic_tokens":
        spec = DataSpec((cfg.block_size,), cfg.num_classes, task="lm")
        sets = []
        for n in sizes:
            seq = torch.randint(0, cfg.num_classes, (n, cfg.block_size + 1), generator=g)
            sets.append(TensorDataset(seq[:, :-1], seq[:, 1:]))
        return Splits(*sets, spec=spec)
    shape = tuple(cfg.shape)
    if cfg.name == "synthetic_images" and len(shape) != 3:
        raise ConfigError(f"data.shape = {cfg.shape}: synthetic_images needs [channels, height, width]")
    if cfg.task == "regression":
        return _regression(cfg, shape, sizes, g)
    spec = DataSpec(shape, cfg.num_classes, [str(i) for i in range(cfg.num_classes)])
    sets = [
        TensorDataset(torch.randn((n, *shape), generator=g), torch.randint(0, cfg.num_classes, (n,), generator=g))
        for n in sizes
    ]
    return Splits(*sets, spec=spec)


def _regression(cfg, shape: tuple, sizes: tuple, g: torch.Generator) -> Splits:
    """Inputs drawn from a standard normal; the target a fixed random smooth function of them (a
    linear part and a one-hidden-layer tanh network, drawn once from the seed; its standard
    deviation is about 1.3) plus Gaussian noise of standard deviation 0.1, standardised with the
    training split's statistics: a model can reach R^2 of about 0.99."""
    d = math.prod(shape)
    linear = torch.randn(d, 1, generator=g) / math.sqrt(d)
    hidden = torch.randn(d, 16, generator=g) / math.sqrt(d)
    out = torch.randn(16, 1, generator=g) / 4
    xs, ys = [], []
    for n in sizes:
        x = torch.randn((n, *shape), generator=g)
        flat = x.reshape(n, d)
        signal = (flat @ linear + torch.tanh(2 * flat @ hidden) @ out).squeeze(1)
        xs.append(x)
        ys.append(signal + 0.1 * torch.randn(n, generator=g))
    shift, scale = float(ys[0].mean()), float(ys[0].std(correction=0)) or 1.0
    spec = DataSpec(shape, 1, task="regression",
                    preprocessing={"target": "y", "target_shift": shift, "target_scale": scale})  # fmt: skip
    return Splits(*(TensorDataset(x, (y - shift) / scale) for x, y in zip(xs, ys)), spec=spec)


def _check_memory(cfg, samples: int) -> None:
    """Fail with the sizes before allocating: torch's own failure is a traceback, and an allocation
    that fits the address space but not the memory ends in the kernel's OOM killer instead."""
    if cfg.name == "synthetic_tokens":
        need = samples * (cfg.block_size + 1) * 8  # int64 ids; inputs and targets are views of one tensor
    else:
        need = samples * (math.prod(cfg.shape) * 4 + 8)  # float32 inputs, int64 labels
    available = psutil.virtual_memory().available
    other = "data.block_size" if cfg.name == "synthetic_tokens" else "data.shape"
    if need > available:
        raise ConfigError(
            f"data.samples = {cfg.samples}: {cfg.name} would need {_size(need)} of memory for its three splits "
            f"({samples:,} samples); {_size(available)} is available. Lower data.samples or {other}"
        )


def _size(n: int) -> str:
    for unit, bits in (("TiB", 40), ("GiB", 30)):
        if n >= 2**bits:
            return f"{n / 2**bits:,.1f} {unit}"
    return f"{n / 2**20:,.1f} MiB"
