"""The two small data sets that ship inside scikit-learn (8x8 digits, Wisconsin breast cancer),
read from scikit-learn's own files without importing it: ``import sklearn`` pulls in SciPy and
takes over 2 s of every process's start, for two CSV files. The arrays are the ones
``sklearn.datasets.load_digits``/``load_breast_cancer`` return (a test compares them)."""

import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np

BREAST_CANCER_MEASURES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
                          "concave points", "symmetry", "fractal dimension")  # fmt: skip


def _data_file(name: str) -> Path:
    spec = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed (pip install scikit-learn): it ships this data set")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (1797, 8, 8) with values 0..16, labels, class names)."""
    with gzip.open(_data_file("digits.csv.gz"), mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int), [str(c) for c in range(10)]


def breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(features (569, 30), labels (0 malignant, 1 benign), class names, feature names)."""
    with _data_file("breast_cancer.csv").open(encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows)  # n_samples, n_features, class names...
        table = np.array(list(rows), dtype=np.float64)
    features = [f"mean {m}" for m in BREAST_CANCER_MEASURES] + [f"{m} error" for m in BREAST_CANCER_MEASURES]
    features += [f"worst {m}" for m in BREAST_CANCER_MEASURES]
    return table[:, :-1], table[:, -1].astype(int), header[2:], features
