"""Tabular data sets: features scaled with statistics of the training split only."""

import numpy as np
from sklearn.datasets import load_breast_cancer

from hpc_dl.data.spec import DataSpec, Splits, split_indices, tensor_splits


def fit_scaler(x_train: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) so that (x - shift) / scale is standardised or in [0, 1]."""
    if kind == "standard":
        shift, scale = x_train.mean(axis=0), x_train.std(axis=0)
    else:
        shift, scale = x_train.min(axis=0), x_train.max(axis=0) - x_train.min(axis=0)
    return shift, np.where(scale > 0, scale, 1.0)  # a constant column stays constant


def breast_cancer(cfg) -> Splits:
    bunch = load_breast_cancer()
    x, y = bunch.data, bunch.target
    parts = split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    shift, scale = fit_scaler(x[parts[0]], cfg.scaling)
    spec = DataSpec(
        input_shape=(x.shape[1],),
        num_classes=2,
        class_names=[str(c) for c in bunch.target_names],
        feature_names=[str(f) for f in bunch.feature_names],
        preprocessing={"scaling": cfg.scaling, "shift": shift.tolist(), "scale": scale.tolist()},
    )
    return tensor_splits((x - shift) / scale, y, parts, spec)
