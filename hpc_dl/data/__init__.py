"""Data registry: ``data.name`` in the config picks a loader here.

A loader returns the three fixed splits as in-memory datasets and a DataSpec
that tells the model its input shape and output size. Splits depend only on
``data.split_seed``, never on the training seed, so runs with different seeds
are evaluated on the same test samples.
"""

from hpc_dl.data.images import cifar, digits, imagefolder
from hpc_dl.data.spec import DataSpec, Splits, split_indices, tensor_splits
from hpc_dl.data.synthetic import synthetic
from hpc_dl.data.tabular import breast_cancer, csv_table
from hpc_dl.data.tokens import tokens

LOADERS = {
    "digits": digits,
    "breast_cancer": breast_cancer,
    "cifar10": cifar,
    "cifar100": cifar,
    "imagefolder": imagefolder,
    "csv": csv_table,
    "tokens": tokens,
    "synthetic_images": synthetic,
    "synthetic_tabular": synthetic,
    "synthetic_tokens": synthetic,
}

__all__ = ["LOADERS", "DataSpec", "Splits", "build", "split_indices", "tensor_splits"]


def build(cfg) -> Splits:
    return LOADERS[cfg.name](cfg)
