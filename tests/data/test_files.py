"""Data sets read from disk: each test writes a small one in the real format."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hpc_dl import config, data
from hpc_dl.errors import UserError
from tests.conftest import CONFIGS, run_cli

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, per_batch=40):
    """The official python version: pickled dicts with 'data' (N x 3072 uint8, channel-major rows)
    and 'labels', plus batches.meta with 'label_names'. The red channel encodes the class."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        pixels = rng.integers(0, 64, (per_batch, 3072), dtype=np.uint8)
        pixels[:, :1024] += (np.array(labels, dtype=np.uint8) * 19)[:, None]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": pixels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return folder


def _cifar(root, *overrides):
    return data.build(config.load(None, ["data.name=cifar10", f"data.root={root}", *overrides]).data)


def test_cifar10_official_format_is_read_channel_major(tmp_path):
    folder = write_cifar10(tmp_path)
    probe = np.zeros((1, 3072), dtype=np.uint8)
    probe[0, :1024] = 255  # red
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"labels": [3], "data": probe}, f)
    splits = _cifar(tmp_path, "data.augment.crop_padding=0", "data.augment.hflip=false")
    assert splits.spec.class_names == CIFAR10_CLASSES and splits.spec.input_shape == (3, 32, 32)
    assert len(splits.train) + len(splits.val) == 200 and len(splits.test) == 1
    x, y = splits.test[0]
    mean, std = data.images.CIFAR["cifar10"][3:]
    assert y == 3 and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((32, 32), (1 - mean[0]) / std[0]), atol=1e-5)
    assert torch.allclose(x[1], torch.full((32, 32), -mean[1] / std[1]), atol=1e-5)


def test_cifar_missing_files_are_named(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"cifar-10-batches-py/ with .*; missing: data_batch_3\. Download"):
        _cifar(tmp_path)
    with pytest.raises(UserError, match="cifar-100-python/ with train, test, meta; missing: train, test, meta"):
        data.build(config.load(None, ["data.name=cifar100", f"data.root={tmp_path}"]).data)


@pytest.mark.slow
def test_cifar10_trains_through_the_cli_with_its_config(tmp_path):
    write_cifar10(tmp_path / "data")
    overrides = [
        f"data.root={tmp_path / 'data'}", "train.steps=4", "data.batch_size=16", "data.num_workers=2",
        "optim.warmup_steps=1", "checkpoint.every=0",
    ]  # fmt: skip
    run_cli("train", CONFIGS / "cifar10_resnet20.yaml", *overrides, "--run-dir", tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["test"]["samples"] == 40


def write_image_tree(root, classes=("cat", "dog"), n_train=6, n_val=3, size=40):
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[..., k] += 170  # the class shows in one colour channel
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_imagefolder_tree_of_pngs(tmp_path):
    write_image_tree(tmp_path)
    cfg = config.load(None, ["data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=32"]).data
    splits = data.build(cfg)
    assert splits.spec.class_names == ["cat", "dog"] and (len(splits.train), len(splits.val)) == (12, 6)
    x, y = splits.val[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    assert x[1].mean() > x[0].mean()  # a "dog" is green: the channels were not shuffled
    assert "no test/ folder" in splits.test_source
    (tmp_path / "val").rename(tmp_path / "test")
    shutil.copytree(tmp_path / "test", tmp_path / "val")
    assert data.build(cfg).test_source is None  # a real test/ split


def test_imagefolder_errors_name_the_folder(tmp_path):
    write_image_tree(tmp_path, classes=("cat", "dog"))
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "cow")
    with pytest.raises(UserError, match="class folders"):
        data.build(config.load(None, ["data.name=imagefolder", f"data.root={tmp_path}"]).data)
    with pytest.raises(UserError, match=r"expected an ImageNet-style tree .*no such folder"):
        data.build(config.load(None, ["data.name=imagefolder", f"data.root={tmp_path / 'nope'}"]).data)


@pytest.mark.slow
def test_imagefolder_trains_a_few_steps(tmp_path):
    write_image_tree(tmp_path / "tree")
    run_cli("train", "data.name=imagefolder", f"data.root={tmp_path / 'tree'}", "data.image_size=32",
            "data.batch_size=4", "data.augment.color_jitter=0.2", "train.steps=3", "model.name=resnet18",
            "model.small_input=true", "--run-dir", tmp_path / "run")  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["samples"] == 6
    assert "no test/ folder" in summary["test_source"]  # the tree has no test/: said, not silently val/


GOOD_CSV = """age,colour,income,label
31,red,52000,yes
45,blue,61000,no
"""


def _csv(tmp_path, text, *overrides):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return data.build(config.load(None, ["data.name=csv", f"data.path={path}", *overrides]).data)


def test_csv_one_hot_and_scaling_fitted_on_train(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["age,colour,income,label"]
    for i in range(100):
        colour = ["red", "green", "blue"][i % 3]
        rows.append(f"{rng.integers(20, 70)},{colour},{rng.normal(5e4, 1e4):.0f},{'yes' if i % 2 else 'no'}")
    splits = _csv(tmp_path, "\n".join(rows) + "\n", "data.categorical=[colour]")
    spec = splits.spec
    assert spec.class_names == ["no", "yes"] and spec.task == "binary"
    assert spec.feature_names == ["age", "income", "colour=blue", "colour=green", "colour=red"]
    x = splits.train.tensors[0]
    assert torch.allclose(x[:, :2].mean(0), torch.zeros(2), atol=1e-5)  # standardised on train
    assert torch.all(x[:, 2:].sum(1) == 1)  # exactly one colour per row
    mm = _csv(tmp_path, "\n".join(rows) + "\n", "data.categorical=[colour]", "data.scaling=minmax")
    assert mm.train.tensors[0][:, :2].min() == 0 and mm.train.tensors[0][:, :2].max() == 1


def test_csv_bad_rows_are_reported_by_line_number(tmp_path):
    text = GOOD_CSV + "52,green,,yes\n29,red,abc,no\n33,blue,40000\n"
    with pytest.raises(UserError) as info:
        _csv(tmp_path, text, "data.categorical=[colour]")
    message = str(info.value)
    assert "3 bad row(s)" in message
    assert "line 4: column 'income' is missing" in message
    assert "line 5: column 'income' = 'abc' is not a number" in message
    assert "line 6: 3 fields, the header has 4" in message


def test_csv_unknown_columns_are_named(tmp_path):
    with pytest.raises(UserError, match="data.target: no column 'class' in .*columns are age, colour, income, label"):
        _csv(tmp_path, GOOD_CSV, "data.target=class")
    with pytest.raises(UserError, match="data.categorical: no column 'color'"):
        _csv(tmp_path, GOOD_CSV, "data.categorical=[color]")
    with pytest.raises(UserError, match="column 'colour' = 'red' is not a number"):
        _csv(tmp_path, GOOD_CSV)


def test_token_file_windows_and_contiguous_splits(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) % 300
    ids.tofile(tmp_path / "corpus.bin")
    splits = data.build(config.load(None, ["data.name=tokens", f"data.path={tmp_path / 'corpus.bin'}",
                                           "data.block_size=16", "data.stride=4"]).data)  # fmt: skip
    assert splits.spec.task == "lm" and splits.spec.num_classes == 300 and splits.spec.input_shape == (16,)
    x, y = splits.train[2]
    assert torch.equal(x, torch.arange(8, 24)) and torch.equal(y, torch.arange(9, 25))
    assert splits.train.tokens.__class__ is np.memmap
    assert splits.val.tokens[0] == 700 % 300 and len(splits.test.tokens) == 150  # by position, 70/15/15


def test_token_folder_layout_and_dtype_errors(tmp_path):
    for name, n in (("train.bin", 500), ("val.bin", 100)):
        (np.arange(n, dtype=np.uint32) % 70000).astype(np.uint32).tofile(tmp_path / name)
    cfg = config.load(None, ["data.name=tokens", f"data.path={tmp_path}", "data.dtype=uint32", "data.block_size=8"])
    splits = data.build(cfg.data)
    assert splits.spec.num_classes == 500 and len(splits.val) == len(splits.test)  # no test.bin: val again
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match="7 bytes is not a whole number of uint16 ids"):
        data.build(config.load(None, ["data.name=tokens", f"data.path={tmp_path / 'odd.bin'}"]).data)
    with pytest.raises(UserError, match="data.vocab_size = 10: the data holds token id 499"):
        data.build(config.load(None, ["data.name=tokens", f"data.path={tmp_path}", "data.dtype=uint32",
                                      "data.block_size=8", "data.vocab_size=10"]).data)  # fmt: skip


def test_builtin_corpus_is_the_transformers_default():
    splits = data.build(config.load(CONFIGS / "verse_gpt.yaml").data)
    chars = splits.spec.class_names
    assert 40 < len(chars) < 100 and "e" in chars and splits.spec.num_classes == len(chars)
    x, _ = splits.train[0]
    assert "".join(chars[i] for i in x[:21]) == "From fairest creature"


@pytest.mark.parametrize(
    ("name", "shape"), [("synthetic_images", (3, 16, 16)), ("synthetic_tabular", (12,)), ("synthetic_tokens", (32,))]
)
def test_synthetic_data_is_seeded_and_shaped(name, shape):
    over = [f"data.name={name}", "data.samples=64", "data.block_size=32", f"data.shape={list(shape)}"]
    a, b = (data.build(config.load(None, over).data) for _ in range(2))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and a.spec.input_shape == shape
    assert len(a.train) == 64 and len(a.val) == 16


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cifar10", "imagefolder"])
def test_on_device_augmentation_trains_through_the_trainer(tmp_path, kind):
    from hpc_dl.training.run import train

    if kind == "cifar10":
        write_cifar10(tmp_path / "d")
        over = ["data.name=cifar10", "data.on_device=true", "data.augment.erasing=0.5"]
    else:
        write_image_tree(tmp_path / "d")
        over = ["data.name=imagefolder", "data.image_size=32", "data.augment.color_jitter=0.3"]
    cfg = config.load(None, [*over, f"data.root={tmp_path / 'd'}", "data.augment.on_device=true", "data.batch_size=4",
                             "train.steps=3", "log.progress=off", "log.plots=false"])  # fmt: skip
    splits = data.build(cfg.data)
    assert splits.batch_transform is not None
    if kind == "imagefolder":  # decoded and resized in the loader, still uint8 for the device
        assert splits.train[0][0].dtype == torch.uint8 and splits.train[0][0].shape == (3, 32, 32)
    assert train(cfg, run_dir=tmp_path / "run")["steps"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("on_device", [False, True], ids=["transforms.v2", "on-device"])
def test_resume_is_exact_with_random_augmentation(tmp_path, on_device):
    from hpc_dl import checkpoint
    from hpc_dl.training.run import train

    write_cifar10(tmp_path / "d")
    cfg = config.load(CONFIGS / "cifar10_resnet20.yaml", [
        f"data.root={tmp_path / 'd'}", "data.num_workers=0", "data.batch_size=8", "train.steps=6",
        "optim.warmup_steps=1", "checkpoint.every=3", "log.progress=off", "log.plots=false",
        "data.augment.erasing=0.5", "data.augment.color_jitter=0.2", f"data.augment.on_device={str(on_device).lower()}",
    ])  # fmt: skip
    train(cfg, run_dir=tmp_path / "a")
    train(cfg, run_dir=tmp_path / "b", resume=str(tmp_path / "a" / "checkpoints" / "step_00000003.pt"))
    a, b = (checkpoint.load(tmp_path / r / "checkpoints" / "step_00000006.pt")["model"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
