"""FLOP counts against hand-computed values, MFU arithmetic, the peak table, the GEMM benchmark."""

import json

import pytest
import torch

from hpc_dl import config
from hpc_dl.bench import gemm
from hpc_dl.cli import main
from hpc_dl.data.spec import DataSpec
from hpc_dl.telemetry import flops, peaks
from hpc_dl.training.run import train
from tests.conftest import CONFIGS


def test_mlp_flops_equal_the_hand_count():
    # 30 -> 16 -> 1, batch 4. A linear layer with w weights costs 2*B*w forward, 2*B*w for its
    # weight gradient, and 2*B*w for its input gradient, which the first layer does not need.
    b, w1, w2 = 4, 30 * 16, 16 * 1
    counted = flops.count(config.MLPConfig(hidden=[16]), DataSpec((30,), 2), batch_size=b)
    assert counted.forward == 2 * b * (w1 + w2)
    assert counted.total == 2 * b * (w1 + w2) + 2 * b * (w1 + w2) + 2 * b * w2


def test_lenet5_flops_equal_the_hand_count():
    # Multiply-adds: C1 28*28*6*25 = 117,600; C3 10*10*16*(6*25) = 240,000; C5 120*16*25 = 48,000;
    # F6 120*84 = 10,080; output 84*10 = 840. Forward = 2 x 416,520 = 833,040.
    forward = 2 * (117_600 + 240_000 + 48_000 + 10_080 + 840)
    counted = flops.count(config.LeNetConfig(), DataSpec((1, 32, 32), 10), batch_size=1)
    assert counted.forward == forward == 833_040
    assert counted.total == 3 * forward - 2 * 117_600  # no input gradient for the first convolution
    shares = {k.split(".", 1)[1]: v for k, v in counted.per_module.items() if k.count(".") == 1}
    assert sum(shares.values()) == counted.total  # every FLOP is credited to a top-level block


def test_transformer_counted_and_analytic_flops_agree():
    cfg = config.GPTConfig(n_layer=3, n_head=4, n_embd=96)
    spec = DataSpec((64,), 65, task="lm")
    counted = flops.count(cfg, spec, batch_size=8).total
    analytic = flops.gpt_analytic(cfg, spec, batch_size=8)
    assert analytic == pytest.approx(counted, rel=0.01)  # stated tolerance: 1 %


def test_mfu_worked_example():
    # 8 H100 SXM at 989.4 dense bf16 TFLOP/s; a step of 4 PFLOP that takes 1.25 s.
    peak = peaks.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")
    assert peak == 989.4
    assert peaks.mfu(4e15, 1.25, 8, peak) == pytest.approx(4e15 / 1.25 / (8 * 989.4e12))
    assert peaks.mfu(4e15, 1.25, 8, peak) == pytest.approx(0.4043, abs=1e-4)
    assert peaks.mfu(4e15, 1.25, 8, None) is None


@pytest.mark.parametrize(
    ("name", "row", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", "H100 NVL", 835.0),
        ("NVIDIA H200", "H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ],
)
def test_peak_table_rows(name, row, bf16):
    assert peaks.gpu_model(name) == row and peaks.peak_tflops(name, "bf16") == bf16
    assert peaks.peak_tflops(name, "tf32") < bf16 and peaks.peak_tflops(name, "fp32") < peaks.peak_tflops(name, "tf32")


def test_unknown_gpus_and_cpus_get_no_peak():
    assert peaks.gpu_model("NVIDIA GeForce RTX 4090") is None and peaks.peak_tflops("Tesla V100-SXM2", "bf16") is None
    assert all(v["bf16"] < 1000 for v in peaks.PEAKS.values())  # never the 2:4-sparsity figure
    assert peaks.resolve(None, torch.device("cpu"), None, True)[0] is None
    assert peaks.resolve(123.0, torch.device("cpu"), None, True) == (123.0, "log.peak_tflops")


def test_training_records_carry_throughput_flops_and_mfu(tmp_path):
    cfg = config.load(CONFIGS / "verse_gpt.yaml", ["train.steps=30", "log.every=10", "log.peak_tflops=0.5",
                                                   "log.progress=off", "log.plots=false"])  # fmt: skip
    train(cfg, run_dir=tmp_path / "r")
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["split"] == "train")
    per_sample = flops.count(cfg.model, DataSpec((64,), 56, task="lm"), 32).per_sample
    assert first["peak_tflops"] == 0.5
    assert first["tflops_per_device"] == pytest.approx(per_sample * first["samples_per_s"] / 1e12, rel=1e-6)
    assert first["mfu"] == pytest.approx(first["tflops_per_device"] / 0.5)


def test_gemm_benchmark_on_the_cpu(tmp_path, capsys):
    result = gemm.run(torch.device("cpu"), ["fp32"], sizes=[(64, 64, 64), (128, 64, 32)], repeats=3, warmup=1)
    assert [(r["m"], r["k"], r["n"]) for r in result["rows"]] == [(64, 64, 64), (128, 64, 32)]
    assert all(r["tflops"] == pytest.approx(2 * r["m"] * r["k"] * r["n"] / r["seconds"] / 1e12) for r in result["rows"])
    assert result["achievable_tflops"]["fp32"] == max(r["tflops"] for r in result["rows"])
    assert main(["bench", "gemm", "--device", "cpu", "--dtypes", "int8"]) == 2
    assert "unknown int8" in capsys.readouterr().err


def test_flops_command_prints_the_table(capsys):
    assert main(["flops", str(CONFIGS / "verse_gpt.yaml"), "log.peak_tflops=989.4"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0" in out and "total" in out and "lower bound on the step time at 989.4 TFLOP/s" in out
    assert "analytic 6*N*tokens" in out and "+0.00% vs counted" in out
