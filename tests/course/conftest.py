"""Trained runs shared by the course tests (export, predict, explain)."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from hpc_dl import config
from hpc_dl.data import split_indices
from hpc_dl.training.run import train
from tests.conftest import CONFIGS

QUIET = ["log.wandb=false", "log.plots=false", "log.utilisation=false", "log.progress=off"]


@pytest.fixture(scope="session")
def bc_run(tmp_path_factory):
    """The breast-cancer MLP of configs/, trained."""
    run = tmp_path_factory.mktemp("course") / "bc"
    train(config.load(CONFIGS / "breast_cancer_mlp.yaml", QUIET), str(run))
    return run


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A CNN on digits upsampled to 16x16 and repeated to 3 channels (the export must redo both)."""
    run = tmp_path_factory.mktemp("course") / "digits"
    train(config.load(None, ["data.image_size=16", "data.channels=3", "train.epochs=2", *QUIET]), str(run))
    return run


def raw_test_split(run) -> tuple[np.ndarray, np.ndarray]:
    """The run's test samples as a user has them: breast-cancer rows in their units, digits in [0, 1]."""
    cfg = config.load(run / "config.yaml")
    bunch = load_breast_cancer() if cfg.data.name == "breast_cancer" else load_digits()
    test = split_indices(bunch.target, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)[2]
    if cfg.data.name == "breast_cancer":
        return bunch.data[test].astype(np.float32), bunch.target[test]
    return (bunch.images[test][:, None] / 16.0).astype(np.float32), bunch.target[test]
