"""Telemetry on a real GPU: NVML sampling, CUDA-event step timing, MFU against the table's peak.
Run on a GPU machine with `pytest -m gpu`; deselected elsewhere."""

import json
import re

import pytest
import torch

from hpc_dl import config
from hpc_dl.telemetry import peaks
from hpc_dl.training.run import train

pytestmark = pytest.mark.gpu

# Enough work per step that a GPU is busy for a measurable time; data already on the device.
GPT = ["data.name=synthetic_tokens", "data.on_device=true", "data.block_size=256", "data.batch_size=16",
       "model.name=gpt", "model.n_layer=4", "model.n_embd=512", "model.n_head=8",
       "train.steps=60", "log.every=20", "train.eval_every=0", "log.progress=off", "log.sample_interval_s=0.2",
       "optim.warmup_steps=0"]  # fmt: skip


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "run"
    train(config.load(None, GPT), run_dir=out)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


def test_nvml_sampler_reports_the_gpu(gpu_run):
    rank = gpu_run[-1]["ranks"][0]
    assert rank["samples"] >= 1
    assert 0 <= rank["gpu_util"] <= 100 and rank["gpu_util"] > 0  # the GPU was busy during the window
    assert 0 < rank["gpu_mem_used_gib"] < rank["gpu_mem_total_gib"]
    assert 0 < rank["power_w"] <= rank["power_limit_w"] * 1.2
    assert 10 < rank["temperature_c"] < 110 and rank["sm_clock_mhz"] > 100
    assert isinstance(rank["throttle_reasons"], int)
    assert gpu_run[-1]["gpu_util_min"] == gpu_run[-1]["gpu_util_max"] == rank["gpu_util"]


def test_cuda_event_breakdown_tiles_the_step(gpu_run):
    for r in gpu_run[1:]:
        parts = r["data_s"] + r["compute_s"] + r["optimizer_s"] + r["other_s"]
        assert parts == pytest.approx(r["step_s"], rel=1e-3)
        # Kernels run asynchronously: host-side timing would put their time wherever the CPU
        # next waits. With device events, forward + backward is most of the step.
        assert r["compute_s"] > 0.5 * r["step_s"]


def test_mfu_uses_the_table_peak_for_this_gpu(gpu_run):
    name = torch.cuda.get_device_name(0)
    row = peaks.gpu_model(name)
    if row is None:
        assert not re.search(r"H100|H200", name), f"'{name}' is a Hopper GPU the peak table must recognise"
        pytest.skip(f"{name} is not in the peak table")
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp32"  # the run's precision is auto
    r = gpu_run[-1]
    assert r["peak_tflops"] == peaks.PEAKS[row][dtype]
    if row in ("H100 SXM", "H200"):
        assert r["peak_tflops"] == 989.4  # dense bf16, not the 2:4-sparse 1979
    assert r["mfu"] == pytest.approx(r["tflops_per_device"] / r["peak_tflops"], rel=1e-6)
    assert 0 < r["mfu"] < 1
