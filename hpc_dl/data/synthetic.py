"""Random data for benchmarks, generated once from a seed and held in memory (or on the
device with data.on_device), so the input pipeline costs nothing next to the model."""

import torch
from torch.utils.data import TensorDataset

from hpc_dl.data.spec import DataSpec, Splits
from hpc_dl.errors import ConfigError


def synthetic(cfg) -> Splits:
    g = torch.Generator().manual_seed(cfg.seed)
    sizes = (cfg.samples, max(1, cfg.samples // 4), max(1, cfg.samples // 4))
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
    spec = DataSpec(shape, cfg.num_classes, [str(i) for i in range(cfg.num_classes)])
    sets = [
        TensorDataset(torch.randn((n, *shape), generator=g), torch.randint(0, cfg.num_classes, (n,), generator=g))
        for n in sizes
    ]
    return Splits(*sets, spec=spec)
