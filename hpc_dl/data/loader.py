"""Batches for training and evaluation, sharded by rank.

Training draws an endless stream of micro-batches. Each epoch's order is a
permutation seeded by (seed, epoch) alone, so the stream can be resumed at any
batch from two integers -- no iterator state to pickle -- and every rank agrees
on the permutation without communicating. Rank r takes every world_size-th index
of it, so micro-batch b of all ranks together is the permutation's block
[b * world_size * batch_size, (b + 1) * world_size * batch_size) and optimizer
step k is the block [k * G, (k + 1) * G), G = world_size * batch_size * accum:
the position in an epoch is a number of samples that means the same on any
world size with the same global batch G (resume on another world size). The
tail that does not fill a whole step is dropped, so no sample is seen twice in
an epoch and every epoch is whole steps on every world size.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from hpc_dl.errors import ConfigError


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


class BatchStream:
    """``device``: where to hold an in-memory data set (data.on_device); ``None`` keeps it on the host."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank=0, world_size=1, *, accum=1,
                 num_workers=0, pin_memory=False, persistent_workers=False, device=None):  # fmt: skip
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        step = world_size * batch_size * accum  # samples per optimizer step, all ranks together
        self.batches_per_epoch = len(dataset) // step * accum
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size = {batch_size} x train.grad_accum = {accum} x {world_size} process(es) = {step} "
                f"samples per step: more than the {len(dataset)} training samples"
            )
        self.epoch = 0
        self.batch = 0  # batches of this epoch already handed out
        self.tensors = _in_memory(dataset, num_workers, device)
        if self.tensors is None:
            self.loader = DataLoader(
                dataset, batch_size=batch_size, sampler=_Remaining(self), drop_last=True, num_workers=num_workers,
                pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
            )  # fmt: skip

    def _epoch_indices(self) -> torch.Tensor:
        perm = torch.randperm(len(self.dataset), generator=_generator(self.seed, self.epoch))
        mine = perm[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return mine[self.batch * self.batch_size :]

    def __iter__(self) -> Iterator:
        while True:
            if self.tensors is not None:  # index whole batches: no per-sample collate
                idx = self._epoch_indices().to(self.tensors[0].device)
                batches = ([t[b] for t in self.tensors] for b in idx.split(self.batch_size))
            else:
                self.loader.generator = _generator(self.seed, self.epoch, self.batch)  # worker seeds
                batches = iter(self.loader)
            for batch in batches:
                self.batch += 1
                if self.batch == self.batches_per_epoch:
                    self.epoch, self.batch = self.epoch + 1, 0
                yield batch

    def state_dict(self) -> dict:
        """``samples``: the epoch's samples taken by all ranks together, which any world size can resume."""
        return {"epoch": self.epoch, "batch": self.batch, "samples": self.batch * self.world_size * self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        per_batch = self.world_size * self.batch_size
        samples = int(state.get("samples", int(state["batch"]) * per_batch))  # older checkpoints: same world size
        if samples % per_batch:
            raise ValueError(
                f"the data position ({samples} samples into epoch {state['epoch']}) is not a whole number of "
                f"this run's micro-batches ({self.world_size} x {self.batch_size} samples)"
            )
        self.epoch, self.batch = int(state["epoch"]), samples // per_batch


class _Remaining(Sampler):
    """The rest of the current epoch's indices, read when the loader starts an iterator
    (so one loader, and its persistent workers, serve every epoch)."""

    def __init__(self, stream: BatchStream):
        self.stream = stream

    def __iter__(self):
        return iter(self.stream._epoch_indices().tolist())

    def __len__(self):
        return (self.stream.batches_per_epoch - self.stream.batch) * self.stream.batch_size


def _in_memory(dataset: Dataset, num_workers: int, device) -> list[torch.Tensor] | None:
    if isinstance(dataset, TensorDataset) and num_workers == 0:
        return [t.to(device) for t in dataset.tensors] if device is not None else list(dataset.tensors)
    return None


def eval_batches(dataset: Dataset, batch_size: int, rank=0, world_size=1, num_workers=0, device=None) -> Iterator:
    """Rank r evaluates samples r, r+world, ...: each sample exactly once over all ranks.
    The loader has its own generator so it never draws on the global RNG: how often a
    run evaluates must not change its dropout masks."""
    tensors = _in_memory(dataset, num_workers, device)
    if tensors is not None:
        idx = torch.arange(rank, len(dataset), world_size, device=tensors[0].device)
        return ([t[b] for t in tensors] for b in idx.split(batch_size))
    return iter(DataLoader(dataset, batch_size=batch_size, sampler=range(rank, len(dataset), world_size),
                           num_workers=num_workers, generator=torch.Generator()))  # fmt: skip
