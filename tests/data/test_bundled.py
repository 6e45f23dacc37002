"""The bundled data sets and the stratified split, without scikit-learn at run time, give exactly
what scikit-learn gives (so runs, splits and results are those of earlier versions)."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from hpc_dl.data import bundled
from hpc_dl.data.spec import split_indices


def test_digits_and_breast_cancer_equal_scikit_learns():
    images, y, names = bundled.digits()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(y, d.target)
    assert names == [str(c) for c in d.target_names]
    x, y, classes, features = bundled.breast_cancer()
    b = load_breast_cancer()
    assert np.array_equal(x, b.data) and np.array_equal(y, b.target)
    assert classes == list(b.target_names) and features == list(b.feature_names)


def _sklearn_split(labels, val, test, seed):
    idx = np.arange(len(labels))
    rest, held = (
        (idx, idx[:0]) if test == 0 else train_test_split(idx, test_size=test, stratify=labels, random_state=seed)
    )
    train, valid = train_test_split(rest, test_size=val / (1 - test), stratify=labels[rest], random_state=seed)
    return train, valid, held


@pytest.mark.parametrize("trial", range(40))
def test_split_equals_scikit_learns_train_test_split(trial):
    rng = np.random.default_rng(trial)
    k, n = int(rng.integers(2, 12)), int(rng.integers(60, 900))
    labels = rng.choice(k, n, p=rng.dirichlet(np.ones(k) * 3))  # unbalanced classes, ties in the remainders
    if np.bincount(labels, minlength=k).min() < 8:
        labels = np.concatenate([labels, np.repeat(np.arange(k), 8)])
    val, test, seed = float(rng.choice([0.1, 0.15, 0.2, 1 / 3])), float(rng.choice([0, 0.1, 0.15])), trial
    ours, theirs = split_indices(labels, val, test, seed), _sklearn_split(labels, val, test, seed)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_class_too_small_to_split_is_a_value_error():
    with pytest.raises(ValueError, match="rarest has 1"):
        split_indices(np.array([0] * 20 + [1]), 0.15, 0.15, 0)


def test_the_default_job_imports_no_scikit_learn():
    code = (
        "import sys; from hpc_dl import config, data; data.build(config.load().data); print('sklearn' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
