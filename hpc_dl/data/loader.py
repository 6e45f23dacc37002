"""Batches for training and evaluation, sharded by rank.

Training draws an endless stream of micro-batches. Each epoch's order is a
permutation seeded by (seed, epoch) alone, so the stream can be resumed at any
batch from two integers -- no iterator state to pickle -- and every rank agrees
on the permutation without communicating. Rank r takes every world_size-th index
of it; the tail that does not fill a whole batch on every rank is dropped, so no
sample is seen twice in an epoch and all ranks run the same number of steps.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hpc_dl.errors import ConfigError


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


class BatchStream:
    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, rank=0, world_size=1, num_workers=0, pin_memory=False
    ):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.loader_args = dict(num_workers=num_workers, pin_memory=pin_memory)
        per_rank = len(dataset) // world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size = {batch_size} is larger than the {per_rank} training samples per process"
            )
        self.epoch = 0
        self.batch = 0  # batches of this epoch already handed out

    def _epoch_indices(self) -> list[int]:
        perm = torch.randperm(len(self.dataset), generator=_generator(self.seed, self.epoch))
        mine = perm[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return mine[self.batch * self.batch_size :].tolist()

    def __iter__(self) -> Iterator:
        while True:
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=self._epoch_indices(),
                drop_last=True,
                generator=_generator(self.seed, self.epoch, self.batch),  # worker seeds
                **self.loader_args,
            )
            for batch in loader:
                self.batch += 1
                if self.batch == self.batches_per_epoch:
                    self.epoch, self.batch = self.epoch + 1, 0
                yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def eval_loader(dataset: Dataset, batch_size: int, rank=0, world_size=1, num_workers=0) -> DataLoader:
    """Rank r evaluates samples r, r+world, ...: each sample exactly once over all ranks.
    Its own generator keeps the loader off the global RNG, so how often a run
    evaluates does not change its dropout masks."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(rank, len(dataset), world_size),
        num_workers=num_workers,
        generator=torch.Generator(),
    )
