"""The CUDA path: run on a GPU machine with `pytest -m gpu` (deselected elsewhere)."""

import pytest
import torch

from hpc_dl import config
from hpc_dl.training.run import train

pytestmark = pytest.mark.gpu


def test_default_run_on_gpu_uses_bf16_autocast_and_fused_adamw(tmp_path):
    assert torch.cuda.is_available(), "gpu tests need a CUDA device"
    cfg = config.load(None, ["log.progress=off", "train.channels_last=true"])
    summary = train(cfg, run_dir=tmp_path / "gpu")
    assert summary["device"] == "cuda:0"
    assert summary["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "fp32")
    assert summary["test"]["accuracy"] >= 0.95


def test_fp16_uses_loss_scaling(tmp_path):
    cfg = config.load(None, ["log.progress=off", "train.precision=fp16", "train.steps=40"])
    summary = train(cfg, run_dir=tmp_path / "fp16")
    from hpc_dl import checkpoint

    state = checkpoint.load(tmp_path / "fp16" / "checkpoints" / "step_00000040.pt")
    assert state["scaler"]["scale"] > 0 and summary["test"]["accuracy"] > 0.8
