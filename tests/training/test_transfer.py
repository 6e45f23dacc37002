"""Transfer learning: digits 0-4 -> 5-9 with a frozen backbone, discriminative LRs, weight files."""

import pytest
import torch
import torchvision

from hpc_dl import config
from hpc_dl.training.run import train
from hpc_dl.training.weights import read_state_dict
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

QUIET = ["log.wandb=false", "log.plots=false", "log.utilisation=false", "log.progress=off"]
NEW = ["data.classes=[5,6,7,8,9]", "train.steps=12", "optim.lr=0.01", *QUIET]


def _train(run_dir, *overrides):
    return train(config.load(None, [*overrides, *QUIET]), str(run_dir))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("transfer") / "digits0-4"
    summary = _train(run, "data.classes=[0,1,2,3,4]", "train.epochs=3")
    assert summary["test"]["accuracy"] > 0.9
    return run


def test_frozen_backbone_transfers_to_new_digits(pretrained, tmp_path):
    before, _ = read_state_dict(pretrained)
    moved = _train(tmp_path / "transfer", *NEW, f"transfer.weights={pretrained}", "transfer.freeze=features")
    random = _train(tmp_path / "random", *NEW, "transfer.freeze=features")  # the same head on random features
    after, _ = read_state_dict(tmp_path / "transfer")

    frozen = [k for k in before if k.startswith("features.")]  # conv weights and BatchNorm statistics
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["classifier.1.weight"], after["classifier.1.weight"])  # trained
    assert after["classifier.4.weight"].shape == (5, 128)  # the new head: five new classes
    assert moved["transfer"]["frozen_parameters"] == sum(before[k].numel() for k in frozen if "running" not in k
                                                         and "num_batches" not in k)  # fmt: skip
    assert moved["test"]["accuracy"] > 0.6  # chance is 0.2
    assert moved["test"]["accuracy"] > random["test"]["accuracy"]
    assert moved["test"]["loss"] < random["test"]["loss"]


def test_second_phase_unfreezes_with_a_lower_backbone_lr(pretrained, tmp_path):
    first = tmp_path / "head"
    _train(first, *NEW, f"transfer.weights={pretrained}")  # default: everything but the head frozen
    head_only, _ = read_state_dict(first)
    second = _train(tmp_path / "all", *NEW, f"transfer.weights={first}", "transfer.head=keep",
                    "transfer.freeze=none", "transfer.backbone_lr=0.1")  # fmt: skip
    assert second["transfer"]["frozen_parameters"] == 0
    state = torch.load(second["checkpoint"], weights_only=True)
    base = [g["initial_lr"] for g in state["optimizer"]["param_groups"]]
    assert sorted(set(base)) == pytest.approx([0.001, 0.01])  # backbone at a tenth of the head's LR
    final, _ = read_state_dict(tmp_path / "all")
    assert not torch.equal(head_only["features.0.weight"], final["features.0.weight"])  # now trained
    # the kept head started from the first phase's, so accuracy does not fall back to chance
    assert second["test"]["accuracy"] > 0.6


def test_torchvision_weights_file_is_loaded_and_its_head_replaced(tmp_path):
    # A file in the format torchvision publishes (the state dict of its ImageNet model), as a
    # user would have downloaded it; random values, as nothing can be downloaded here.
    path = tmp_path / "resnet18-f37072fd.pth"
    reference = torchvision.models.resnet18(num_classes=1000)
    torch.save(reference.state_dict(), path)
    small = ["data.image_size=64", "data.channels=3", "data.classes=[0,1,2]", "train.steps=2", "data.batch_size=16"]
    summary = _train(tmp_path / "run", "model.name=resnet18", *small, f"transfer.weights={path}")
    assert summary["transfer"]["head"] == "fc" and summary["transfer"]["trainable_parameters"] == 512 * 3 + 3
    after, _ = read_state_dict(tmp_path / "run")
    assert torch.equal(after["layer4.1.conv2.weight"], reference.state_dict()["layer4.1.conv2.weight"])
    assert torch.equal(after["bn1.running_mean"], reference.state_dict()["bn1.running_mean"])


def test_weights_errors_name_the_file_and_the_fix(pretrained, tmp_path):
    missing = run_cli("train", "model.name=resnet18", "data.image_size=64", "data.channels=3",
                      f"transfer.weights={tmp_path}/resnet18-f37072fd.pth", *QUIET, check=False)  # fmt: skip
    assert missing.returncode == 2
    assert "resnet18-f37072fd.pth not found" in missing.stderr and "nothing is downloaded" in missing.stderr
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in missing.stderr
    assert "Traceback" not in missing.stderr

    other = run_cli("train", "model.channels=[16,64]", f"transfer.weights={pretrained}", *QUIET, check=False)
    assert other.returncode == 2 and "'features.0.weight' has shape (32, 1, 3, 3)" in other.stderr

    kept = run_cli("train", f"transfer.weights={pretrained}", "transfer.head=keep", *QUIET, check=False)
    assert kept.returncode == 2 and "the number of classes differs: use transfer.head=new" in kept.stderr

    layer = run_cli("train", "transfer.freeze=conv9", *QUIET, check=False)
    assert layer.returncode == 2 and "transfer.freeze = 'conv9': no such layer" in layer.stderr
    assert "features, classifier" in layer.stderr

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    bad = run_cli("train", f"transfer.weights={junk}", *QUIET, check=False)
    assert bad.returncode == 2 and f"{junk}: not a loadable weights file" in bad.stderr
