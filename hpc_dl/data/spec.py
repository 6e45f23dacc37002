"""What a data set hands the model and the trainer: three splits and their shape."""

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset


@dataclass
class DataSpec:
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str]
    feature_names: list[str] = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)  # e.g. scaler statistics, for export

    @property
    def task(self) -> str:
        return "binary" if self.num_classes == 2 else "multiclass"

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "binary" else self.num_classes


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    spec: DataSpec


def split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Stratified train/val/test index arrays, fixed by ``seed``."""
    idx = np.arange(len(labels))
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
