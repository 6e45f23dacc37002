"""What a data set hands the model and the trainer: three splits and their shape."""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset


@dataclass
class DataSpec:
    """input_shape of one sample; num_classes (the vocabulary size for language modelling);
    task: binary (one logit), multiclass, or lm (next-token prediction at every position)."""

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
        return 1 if self.task == "binary" else self.num_classes


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
    """Stratified train/val/test index arrays, fixed by ``seed``; test is empty for test_fraction 0."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if test_fraction == 0:
        rest, test = idx, idx[:0]
    else:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    val_share = val_fraction / (1 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed)
    return train, val, test


def tensor_splits(x: np.ndarray, y: np.ndarray, parts, spec: DataSpec) -> Splits:
    as_tensors = [
        TensorDataset(torch.as_tensor(x[i], dtype=torch.float32), torch.as_tensor(y[i], dtype=torch.long))
        for i in parts
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
