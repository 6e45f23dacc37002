"""Image data sets: scikit-learn's digits, CIFAR-10/100 (official python format), ImageFolder trees."""

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from hpc_dl.data.augment import BatchAugment, sample_transform
from hpc_dl.data.spec import DataSpec, Splits, Transformed, split_indices, tensor_splits
from hpc_dl.errors import UserError


def digits(cfg) -> Splits:
    """scikit-learn's bundled 8x8 digits (values 0..16), optionally upsampled and repeated to
    more channels, normalised with the mean and standard deviation of the training split."""
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    if cfg.image_size != 8:
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    x = x.repeat(1, cfg.channels, 1, 1).numpy()
    y, names = bunch.target, [str(c) for c in bunch.target_names]
    if cfg.classes:  # a subset, e.g. 0-4 to pre-train and 5-9 to transfer to
        keep = np.isin(y, cfg.classes)
        x, y = x[keep], np.array([cfg.classes.index(v) for v in y[keep]])
        names = [names[c] for c in cfg.classes]
    parts = split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    mean, std = float(x[parts[0]].mean()), float(x[parts[0]].std())
    spec = DataSpec(
        input_shape=(cfg.channels, cfg.image_size, cfg.image_size),
        num_classes=len(names),
        class_names=names,
        preprocessing={"scale": 1 / 16.0, "mean": [mean], "std": [std]},
    )
    return tensor_splits((x - mean) / std, y, parts, spec)


CIFAR = {
    # name: (torchvision class, folder, files, mean, std); statistics of the training images
    "cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"],
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (torchvision.datasets.CIFAR100, "cifar-100-python", ["train", "test", "meta"],
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}  # fmt: skip


def _present(cls):
    """torchvision's CIFAR class without its md5 checks: we check that the files are there,
    with a better message, and hashing 160 MB at every start of every rank on a shared file
    system is slow. The batch files are then read by torchvision's own code."""

    def load_meta(self):
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return type(cls.__name__, (cls,), {"_check_integrity": lambda self: True, "_load_meta": load_meta})


def cifar(cfg) -> Splits:
    cls, folder, files, mean, std = CIFAR[cfg.name]
    where = Path(cfg.root) / folder
    missing = [f for f in files if not (where / f).is_file()]
    if missing:
        raise UserError(
            f"data.root = '{cfg.root}': {cfg.name} needs the official python version in {where}/ "
            f"with {', '.join(files)}; missing: {', '.join(missing)}. Download and unpack it on a "
            "machine with internet (https://www.cs.toronto.edu/~kriz/cifar.html), then copy it there"
        )
    try:
        train, test = (_present(cls)(cfg.root, train=t, download=False) for t in (True, False))
    except Exception as e:  # a truncated or foreign pickle
        raise UserError(f"{where}: cannot read {cfg.name} batch files ({type(e).__name__}: {e})") from e
    x_train, y_train = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(), np.asarray(train.targets)
    tr, va, _ = split_indices(y_train, cfg.val_fraction, 0, cfg.split_seed)
    spec = DataSpec((3, 32, 32), len(train.classes), list(train.classes), preprocessing={"mean": mean, "std": std})
    parts = [
        TensorDataset(x_train[tr], torch.as_tensor(y_train[tr])),
        TensorDataset(x_train[va], torch.as_tensor(y_train[va])),
        TensorDataset(torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(test.targets)),
    ]
    return _augmented(parts, spec, cfg.augment, mean, std)


def _augmented(parts, spec, aug, mean, std, geometry=(None, None)) -> Splits:
    """uint8 images -> normalised floats, augmented per sample in the loader or per batch on the device."""
    if aug.on_device and geometry == (None, None):
        return Splits(*parts, spec=spec, batch_transform=BatchAugment(aug, mean, std))
    if aug.on_device:  # decode and resize in the loader; the rest on the device
        to_uint8 = [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)]
        train, val, test = (Transformed(p, v2.Compose(geometry[i > 0] + to_uint8)) for i, p in enumerate(parts))
        return Splits(train, val, test, spec=spec, batch_transform=BatchAugment(aug, mean, std))
    train_tf = sample_transform(aug, mean, std, True, geometry[0])
    eval_tf = sample_transform(aug, mean, std, False, geometry[1])
    return Splits(
        Transformed(parts[0], train_tf), Transformed(parts[1], eval_tf), Transformed(parts[2], eval_tf), spec=spec
    )


def imagefolder(cfg) -> Splits:
    root = Path(cfg.root)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir())) if root.is_dir() else "no such folder"
        raise UserError(
            f"data.root = '{cfg.root}': expected an ImageNet-style tree {root}/train/<class>/*.JPEG and "
            f"{root}/val/<class>/... (found: {found})"
        )
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"  # ImageNet has no public test labels
    try:
        sets = [torchvision.datasets.ImageFolder(str(d)) for d in (root / "train", root / "val", test_dir)]
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"data.root = '{cfg.root}': {e}") from e
    for other in sets[1:]:
        if other.classes != sets[0].classes:
            raise UserError(
                f"{other.root}: class folders {other.classes[:5]}... differ from train/'s {sets[0].classes[:5]}..."
            )
    size = cfg.image_size
    resize = v2.Resize(round(size * 256 / 224), antialias=True)  # the usual 256 -> 224 ratio
    geometry = ([v2.ToImage(), resize, v2.RandomCrop(size)], [v2.ToImage(), resize, v2.CenterCrop(size)])
    spec = DataSpec(
        (3, size, size), len(sets[0].classes), sets[0].classes, preprocessing={"mean": cfg.mean, "std": cfg.std}
    )
    return _augmented(sets, spec, cfg.augment, cfg.mean, cfg.std, geometry)
