"""What a data set hands the model and the trainer: three splits and their shape."""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset


@dataclass
class DataSpec:
    """input_shape of one sample; num_classes (the vocabulary size for language modelling; 1 for
    regression); task: binary (one logit), multiclass, lm (next-token prediction at every position)
    or regression (one output, a number: the target standardised on the training split, its
    statistics in preprocessing's target_shift and target_scale, its column name in target)."""

    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)  # e.g. scaler statistics, for export
    task: str = ""

    def __post_init__(self):
        self.task = self.task or ("binary" if self.num_classes == 2 else "multiclass")

    @property
    def num_outputs(self) -> int:
        return 1 if self.task in ("binary", "regression") else self.num_classes

    @property
    def target_units(self) -> tuple[float, float]:
        """(shift, scale) of a regression target: the model predicts (target - shift) / scale."""
        return float(self.preprocessing.get("target_shift", 0.0)), float(self.preprocessing.get("target_scale", 1.0))


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    spec: DataSpec
    # Applied to each batch on the training device, (x, train) -> x: on-device augmentation.
    batch_transform: Callable[[torch.Tensor, bool], torch.Tensor] | None = None
    test_source: str | None = None  # where the test split came from when it is not a split of its own


def split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Stratified train/val/test index arrays, fixed by ``seed``; test is empty for test_fraction 0.
    The same indices as scikit-learn's ``train_test_split(stratify=...)`` twice (a test checks it),
    without importing scikit-learn, which takes over 2 s of every process's start."""
    idx = np.arange(len(labels))
    if test_fraction == 0:
        rest, test = idx, idx[:0]
    else:
        rest, test = _stratified_split(idx, labels, test_fraction, seed)
    val_share = val_fraction / (1 - test_fraction)
    train, val = _stratified_split(rest, labels[rest], val_share, seed)
    return train, val, test


def shuffle_split(n: int, val_fraction: float, test_fraction: float, seed: int):
    """Train/val/test index arrays of a seeded shuffle, for targets that cannot be stratified (a
    regression's numbers); the same split sizes as ``split_indices``. ValueError when a split of
    the sizes asked for would be empty (or the training split has fewer than 2 samples)."""
    n_test = math.ceil(test_fraction * n)
    n_val = math.ceil(val_fraction / (1 - test_fraction) * (n - n_test))
    if n - n_test - n_val < 2 or n_val < 1 or n_test < 1:
        raise ValueError(f"{n} samples cannot be split")
    order = np.random.RandomState(seed).permutation(n)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def standardise_target(y: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, dict]:
    """A regression target standardised with the training split's mean and standard deviation
    (``train``: its indices), and those statistics for ``DataSpec.preprocessing``."""
    shift, scale = float(y[train].mean()), float(y[train].std())
    scale = scale if scale > 0 else 1.0  # a constant target stays constant
    return (y - shift) / scale, {"target_shift": shift, "target_scale": scale}


def _stratified_split(idx: np.ndarray, labels: np.ndarray, test_size: float, seed: int):
    """scikit-learn 1.x's StratifiedShuffleSplit, first split: a shuffled draw per class of the
    approximate mode of the multivariate hypergeometric. ValueError when a class cannot be split."""
    n_test = math.ceil(test_size * len(idx))
    n_train = len(idx) - n_test
    classes, y_indices, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"{len(idx)} samples of {len(classes)} classes (the rarest has {counts.min()}) cannot be split"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return idx[rng.permutation(train)], idx[rng.permutation(test)]


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:  # largest remainders first, ties broken at random
            (inds,) = np.where(remainder == value)
            add = min(len(inds), need)
            floored[rng.choice(inds, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def tensor_splits(x: np.ndarray, y: np.ndarray, parts, spec: DataSpec) -> Splits:
    """In-memory splits; the targets are class indices, or float32 numbers for regression."""
    y_type = torch.float32 if spec.task == "regression" else torch.long
    as_tensors = [
        TensorDataset(torch.as_tensor(x[i], dtype=torch.float32), torch.as_tensor(y[i], dtype=y_type)) for i in parts
    ]
    return Splits(*as_tensors, spec=spec)


class Transformed(Dataset):
    """Applies a per-sample transform to the input of each (x, y) pair."""

    def __init__(self, dataset: Dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return self.transform(x), y
