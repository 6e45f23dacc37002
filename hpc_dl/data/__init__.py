"""Data registry: ``data.name`` in the config picks a loader here.

A loader returns the three fixed splits as in-memory datasets and a DataSpec
that tells the model its input shape and output size. Splits depend only on
``data.split_seed``, never on the training seed, so runs with different seeds
are evaluated on the same test samples.
"""

from pathlib import Path

from hpc_dl import config
from hpc_dl.data.images import cifar, digits, imagefolder
from hpc_dl.data.spec import DataSpec, Splits, split_indices, tensor_splits
from hpc_dl.data.synthetic import synthetic
from hpc_dl.data.tabular import breast_cancer, csv_table
from hpc_dl.data.tokens import tokens
from hpc_dl.errors import ConfigError, UserError

# A loader per config section; the names are the sections' own (config.names), not a second list.
BY_SECTION = {
    config.DigitsConfig: digits,
    config.BreastCancerConfig: breast_cancer,
    config.CifarConfig: cifar,
    config.ImageFolderConfig: imagefolder,
    config.CSVConfig: csv_table,
    config.TokensConfig: tokens,
    config.SyntheticConfig: synthetic,
}
LOADERS = {name: load for section, load in BY_SECTION.items() for name in config.names(section)}

__all__ = ["LOADERS", "DataSpec", "Splits", "build", "shape_spec", "split_indices", "tensor_splits"]


def build(cfg) -> Splits:
    return LOADERS[cfg.name](cfg)


def shape_spec(cfg, classes: int | None = None) -> DataSpec:
    """The input shape, classes and task of the data set, from the config alone where it can be
    known there: FLOP counts and projections are planned on a login node before the data is staged.
    ``classes``: for an ImageFolder tree that is not here. Class names and statistics are left out."""
    name = cfg.name
    if name == "digits":
        return DataSpec((cfg.channels, cfg.image_size, cfg.image_size), len(cfg.classes) or 10)
    if name in ("cifar10", "cifar100"):
        return DataSpec((3, 32, 32), 10 if name == "cifar10" else 100)
    if name == "imagefolder":
        return DataSpec((3, cfg.image_size, cfg.image_size), classes or _class_folders(cfg))
    if name == "synthetic_tokens":
        return DataSpec((cfg.block_size,), cfg.num_classes, task="lm")
    if name.startswith("synthetic"):  # without generating the samples, which may not fit in memory
        if name == "synthetic_images" and len(cfg.shape) != 3:
            raise ConfigError(f"data.shape = {cfg.shape}: synthetic_images needs [channels, height, width]")
        if cfg.task == "regression":
            return DataSpec(tuple(cfg.shape), 1, task="regression")
        return DataSpec(tuple(cfg.shape), cfg.num_classes)
    if name == "tokens" and cfg.vocab_size:
        return DataSpec((cfg.block_size,), cfg.vocab_size, task="lm")
    if name == "tokens" and cfg.path is not None and not Path(cfg.path).exists():
        raise ConfigError(
            f"data.vocab_size = null: the vocabulary is read from data.path = '{cfg.path}', which is not here; "
            "set data.vocab_size (GPT-2's tokenizer: 50257)"
        )
    return build(cfg).spec  # bundled or built-in (cheap), or only the file knows (a CSV's columns)


def _class_folders(cfg) -> int:
    train = Path(cfg.root) / "train"
    found = [p for p in train.iterdir() if p.is_dir()] if train.is_dir() else []
    if not found:
        raise UserError(
            f"data.root = '{cfg.root}': no class folders in {train}/ to count the classes from; give their "
            "number (hpc-dl flops / bench project: --classes N; ImageNet-1k: 1000)"
        )
    return len(found)
