"""A data set of one's own (any map-style ``torch.utils.data.Dataset`` of ``(x, y)`` pairs) as the
trainer's three splits, the way Lightning and fast.ai users hand over their data."""

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hpc_dl.data.spec import DataSpec, Splits
from hpc_dl.errors import UserError


def splits(data, val_fraction: float, test_fraction: float, seed: int, classes: list[str] | None = None) -> Splits:
    """``data``: one Dataset (validation and test split off at random with ``seed``), or a
    (train, val) / (train, val, test) tuple, or a dict with those keys. Integer labels make a
    classification (binary with two classes), floating-point labels a regression."""
    train, val, test, source = _parts(data, val_fraction, test_fraction, seed)
    x0, y0 = _first(train)
    labels = _labels(train)
    if torch.is_floating_point(labels):  # standardised on the training split, as a CSV table's target
        shift, scale = float(labels.mean()), float(labels.std(correction=0)) or 1.0
        units = {"target_shift": shift, "target_scale": scale}
        train, val, test = (Standardised(d, shift, scale) for d in (train, val, test))
        return Splits(train, val, test, DataSpec(tuple(x0.shape), 1, preprocessing=units, task="regression"),
                      test_source=source)  # fmt: skip
    else:
        names = classes or list(getattr(root(train), "classes", None) or [])
        n = len(names) or int(max(_labels(d).max() for d in (train, val, test) if len(d))) + 1
        if labels.min() < 0 or (names and labels.max() >= len(names)):
            raise UserError(f"data: labels run from {int(labels.min())} to {int(labels.max())}; "
                            f"expected 0 .. {n - 1} (one per class)")  # fmt: skip
        spec = DataSpec(tuple(x0.shape), max(n, 2), class_names=[str(c) for c in names])
    return Splits(train, val, test, spec=spec, test_source=source)


class Standardised(Dataset):
    """A regression's samples with the target as (y - shift) / scale: the model learns numbers near
    1 whatever the target's units; the metrics and predictions are reported in those units."""

    def __init__(self, dataset: Dataset, shift: float, scale: float):
        self.dataset, self.shift, self.scale = dataset, shift, scale

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, torch.as_tensor((float(y) - self.shift) / self.scale, dtype=torch.float32)


def _parts(data, val_fraction: float, test_fraction: float, seed: int):
    if isinstance(data, dict):
        unknown = set(data) - {"train", "val", "test"}
        if unknown or "train" not in data:
            raise UserError(
                f"data: a dict needs the keys train, val (optional) and test (optional); got {sorted(data)}"
            )
        data = tuple(data[k] for k in ("train", "val", "test") if k in data)
    if isinstance(data, (tuple, list)):
        if not 1 <= len(data) <= 3 or not all(isinstance(d, Dataset) for d in data):
            raise UserError("data: give a Dataset, or (train, val) or (train, val, test) Datasets")
        if len(data) == 3:
            return *data, None
        if len(data) == 2:  # no test split of its own: the validation split is used
            return data[0], data[1], data[1], "the validation split (no test Dataset given)"
        data = data[0]
    if not isinstance(data, Dataset):
        raise UserError(f"data: a torch.utils.data.Dataset of (input, label) pairs, not {type(data).__name__}")
    n = len(data)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(n * test_fraction), max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise UserError(f"data: {n} samples are too few for data.val_fraction and data.test_fraction")
    test, val, train = np.split(order, [n_test, n_test + n_val])
    source = None if n_test else "the validation split (data.test_fraction = 0)"
    return (
        Subset(data, train.tolist()),
        Subset(data, val.tolist()),
        Subset(data, (test if n_test else val).tolist()),
        source,
    )


def root(dataset):
    """The Dataset under any Subsets (and the standardising of a regression's target)."""
    while isinstance(dataset, (Subset, Standardised)):
        dataset = dataset.dataset
    return dataset


def _first(dataset):
    if len(dataset) == 0:
        raise UserError("data: the training Dataset is empty")
    sample = dataset[0]
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise UserError("data: each sample must be an (input, label) pair")
    x, y = sample
    if not isinstance(x, torch.Tensor):
        raise UserError(f"data: an input is a {type(x).__name__}; give tensors (e.g. transforms.ToTensor())")
    return x, y


def _labels(dataset) -> torch.Tensor:
    """Every label: from ``targets`` (torchvision) or a TensorDataset's tensor without reading the
    inputs, else by reading each sample once (course-sized data)."""
    base, index = dataset, None
    if isinstance(dataset, Subset):
        base, index = root(dataset), _indices(dataset)
    if hasattr(base, "targets"):
        labels = torch.as_tensor(np.asarray(base.targets))
    elif hasattr(base, "tensors") and len(base.tensors) == 2:
        labels = base.tensors[1]
    else:
        base, index = dataset, None
        labels = torch.as_tensor(np.asarray([_label(base[i][1]) for i in range(len(base))]))
    return labels if index is None else labels[index]


def _indices(subset: Subset) -> torch.Tensor:
    index = torch.as_tensor(subset.indices)
    inner = subset.dataset
    while isinstance(inner, Subset):
        index = torch.as_tensor(inner.indices)[index]
        inner = inner.dataset
    return index


def _label(y):
    return y.item() if isinstance(y, torch.Tensor) else y
