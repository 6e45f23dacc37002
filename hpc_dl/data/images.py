"""Image data sets."""

from sklearn.datasets import load_digits

from hpc_dl.data.spec import DataSpec, Splits, split_indices, tensor_splits


def digits(cfg) -> Splits:
    """scikit-learn's bundled 8x8 digits (values 0..16) as 1x8x8 images, normalised
    with the mean and standard deviation of the training split."""
    bunch = load_digits()
    x = bunch.images.reshape(-1, 1, 8, 8) / 16.0
    y = bunch.target
    parts = split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    mean, std = float(x[parts[0]].mean()), float(x[parts[0]].std())
    x = (x - mean) / std
    spec = DataSpec(
        input_shape=(1, 8, 8),
        num_classes=10,
        class_names=[str(c) for c in bunch.target_names],
        preprocessing={"scale": 1 / 16.0, "mean": [mean], "std": [std]},
    )
    return tensor_splits(x, y, parts, spec)
