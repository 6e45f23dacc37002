"""Image data sets: scikit-learn's digits, CIFAR-10/100 (official python format), ImageFolder trees."""

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

from hpc_dl.data import bundled
from hpc_dl.data.augment import BatchAugment, sample_transform
from hpc_dl.data.spec import DataSpec, Splits, Transformed, split_indices, tensor_splits
from hpc_dl.errors import UnreadableFile, UserError, first_line


def digits(cfg) -> Splits:
    """scikit-learn's bundled 8x8 digits (values 0..16), optionally upsampled and repeated to
    more channels, normalised with the mean and standard deviation of the training split."""
    images, y, names = bundled.digits()
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    if cfg.image_size != 8:
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    x = x.repeat(1, cfg.channels, 1, 1).numpy()
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
    # name: (folder, (train batches, test batches, meta file), key of the class names, mean, std);
    # the statistics are those of the training images
    "cifar10": ("cifar-10-batches-py", ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
                "label_names", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", (["train"], ["test"], "meta"), "fine_label_names",
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}  # fmt: skip

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct, whatever NumPy calls it
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # as NumPy 1 pickled arrays (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # as NumPy 2 does
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR files are pickles, and unpickling a global can call any function. The official
    files hold dicts, lists, strings, numbers (no global needed) and NumPy arrays: only the
    globals that rebuild an array are admitted."""

    def __init__(self, f, path: Path):
        super().__init__(f, encoding="latin1")  # written by Python 2
        self.path = path

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return _CIFAR_GLOBALS[module, name]
        raise UserError(
            f"{self.path} holds '{module}.{name}', which the CIFAR format never contains; refusing to unpickle it"
        )


def _unpickle(path: Path, keys: tuple[str, ...]) -> dict:
    """One CIFAR file: a dict with ``keys`` (a list of names, or the labels and an array of images)."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:  # truncated, or not a pickle
        raise UserError(f"{path}: not a CIFAR python file ({type(e).__name__}: {e})") from e
    missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise UserError(f"{path}: not a CIFAR python file (no {', '.join(repr(k) for k in missing)})")
    return entry


def _batches(where: Path, files: list[str], classes: int) -> tuple[torch.Tensor, np.ndarray]:
    """The images (N x 3 x 32 x 32 uint8) and labels of the batch files."""
    images, labels = [], []
    for name in files:
        path = where / name
        entry = _unpickle(path, ("data",))
        x, y = entry["data"], entry.get("labels", entry.get("fine_labels"))  # CIFAR-100 has coarse labels too
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            shown = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise UserError(f"{path}: 'data' should be uint8 rows of 3072 values (3 x 32 x 32), not a {shown}")
        if not isinstance(y, list) or len(y) != len(x) or not all(type(v) is int and 0 <= v < classes for v in y):
            raise UserError(f"{path}: 'labels' should be a list of {len(x)} class numbers from 0 to {classes - 1}")
        images.append(x)
        labels += y
    return torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32)), np.asarray(labels, dtype=np.int64)


def cifar(cfg) -> Splits:
    """The official python version, read here rather than by torchvision: its files are unpickled with
    only NumPy's array globals admitted (see _CifarUnpickler), and not hashed (160 MB at every start of
    every rank on a shared file system is slow; a missing file is named instead)."""
    folder, (train_files, test_files, meta), names_key, mean, std = CIFAR[cfg.name]
    where = Path(cfg.root) / folder
    files = [*train_files, *test_files, meta]
    missing = [f for f in files if not (where / f).is_file()]
    if missing:
        raise UserError(
            f"data.root = '{cfg.root}': {cfg.name} needs the official python version in {where}/ "
            f"with {', '.join(files)}; missing: {', '.join(missing)}. Download and unpack it on a "
            "machine with internet (https://www.cs.toronto.edu/~kriz/cifar.html), then copy it there"
        )
    classes = _unpickle(where / meta, (names_key,))[names_key]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{where / meta}: '{names_key}' should be a list of class names")
    x_train, y_train = _batches(where, train_files, len(classes))
    x_test, y_test = _batches(where, test_files, len(classes))
    tr, va, _ = split_indices(y_train, cfg.val_fraction, 0, cfg.split_seed)
    spec = DataSpec((3, 32, 32), len(classes), classes, preprocessing={"mean": mean, "std": std})
    parts = [
        TensorDataset(x_train[tr], torch.as_tensor(y_train[tr])),
        TensorDataset(x_train[va], torch.as_tensor(y_train[va])),
        TensorDataset(x_test, torch.as_tensor(y_test)),
    ]
    return _augmented(parts, spec, cfg.augment, mean, std)


def _augmented(parts, spec, aug, mean, std, geometry=(None, None)) -> Splits:
    """uint8 images -> normalised floats, augmented per sample in the loader or per batch on the device."""
    if aug.on_device and geometry == (None, None):
        return Splits(*parts, spec=spec, batch_transform=BatchAugment(aug, mean, std))
    if aug.on_device:  # decode and resize in the loader; the rest on the device
        from torchvision.transforms import v2

        to_uint8 = [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)]
        train, val, test = (Transformed(p, v2.Compose(geometry[i > 0] + to_uint8)) for i, p in enumerate(parts))
        return Splits(train, val, test, spec=spec, batch_transform=BatchAugment(aug, mean, std))
    train_tf = sample_transform(aug, mean, std, True, geometry[0])
    eval_tf = sample_transform(aug, mean, std, False, geometry[1])
    return Splits(
        Transformed(parts[0], train_tf), Transformed(parts[1], eval_tf), Transformed(parts[2], eval_tf), spec=spec
    )


def _load_image(path: str):
    """ImageFolder's loader, naming the file it cannot decode. Checking every file up front would
    cost minutes on ImageNet on a shared file system, so a bad one is found when first loaded."""
    from torchvision.datasets.folder import pil_loader

    try:
        return pil_loader(path)
    # PIL reports corrupt data as OSError, SyntaxError, ValueError or EOFError, depending on the decoder.
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        reason = first_line(e, 120)
        raise UnreadableFile(f"{path}: not a readable image ({reason}); remove or replace the file") from None


def imagefolder(cfg) -> Splits:
    import torchvision
    from torchvision.transforms import v2

    root = Path(cfg.root)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir())) if root.is_dir() else "no such folder"
        raise UserError(
            f"data.root = '{cfg.root}': expected an ImageNet-style tree {root}/train/<class>/*.JPEG and "
            f"{root}/val/<class>/... (found: {found})"
        )
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"  # ImageNet has no public test labels
    try:
        folders = (root / "train", root / "val", test_dir)
        sets = [torchvision.datasets.ImageFolder(str(d), loader=_load_image) for d in folders]
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
    splits = _augmented(sets, spec, cfg.augment, cfg.mean, cfg.std, geometry)
    if test_dir.name == "val":  # said in the output and the summary: these are not held-out test figures
        splits.test_source = f"{root / 'val'} (no test/ folder: the test metrics are the validation set's)"
    return splits
