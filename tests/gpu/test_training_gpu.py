"""The CUDA training path, checked on a GPU (part 1 of benchmarks/gpu/run.sh; deselected without CUDA):
the fused AdamW kernel, fp16 loss scaling, flash attention, torch.compile against eager, bf16 against fp32."""

import json
import math

import pytest
import torch

from hpc_dl import config, data, models
from hpc_dl.distributed import precision
from hpc_dl.distributed import strategy as strategies
from hpc_dl.models.gpt import GPT
from hpc_dl.training import rng
from hpc_dl.training.run import train
from hpc_dl.training.trainer import Trainer

pytestmark = pytest.mark.gpu

QUIET = ["log.progress=off", "log.wandb=false", "log.plots=false", "train.eval_every=0", "optim.warmup_steps=0"]
# A small character-level GPT on the built-in verse corpus: its loss falls fast, so two runs that
# agree have learned the same thing, not just sat at log(vocabulary) together. Its validation and
# test splits have 24 sequences each: one evaluation shape, one compilation for it.
VERSE_GPT = ["model.name=gpt", "model.n_layer=2", "model.n_head=4", "model.n_embd=128", "data.name=tokens",
             "data.block_size=64", "data.batch_size=32", "data.eval_batch_size=24", "log.every=10",
             "log.utilisation=false", "optim.lr=3e-3"]  # fmt: skip


def _trainer(overrides: list[str]) -> Trainer:
    """The trainer `hpc-dl train` builds, without the run directory around it."""
    cfg = config.load(None, [*QUIET, *overrides])
    precision.configure_backends(cfg.train.tf32, cfg.train.deterministic)
    rng.seed_everything(cfg.train.seed)
    splits = data.build(cfg.data)
    return Trainer(cfg, strategies.build(cfg), splits, models.build(cfg.model, splits.spec))


def _window_losses(run_dir, overrides: list[str]) -> list[float]:
    train(config.load(None, [*QUIET, *VERSE_GPT, *overrides]), run_dir=run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


def test_adamw_on_cuda_runs_the_fused_kernel(monkeypatch):
    calls = []
    for name in ("_fused_adamw_", "_fused_adam_"):  # AdamW calls the first (torch >= 2.6 through Adam's code)
        kernel = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _k=kernel, **kw: calls.append(1) or _k(*a, **kw))
    trainer = _trainer(["train.steps=3", "log.every=1", "log.utilisation=false"])
    optimizer = trainer.strategy.optimizer
    assert isinstance(optimizer, torch.optim.AdamW) and trainer.device.type == "cuda"
    assert all(group["fused"] for group in optimizer.param_groups)
    trainer.fit()
    assert len(calls) >= 3  # one launch set per step, no per-parameter loop
    state = next(iter(optimizer.state.values()))
    assert state["exp_avg"].is_cuda and state["step"].is_cuda  # the fused path keeps its step count on the device


def test_fp16_loss_scaling_skips_an_overflowing_step_and_lowers_the_scale():
    trainer = _trainer(["train.precision=fp16", "train.steps=5", "log.utilisation=false"])
    s = trainer.strategy
    assert trainer.dtype == torch.float16 and s.scaler.is_enabled()
    x, y = trainer._to_device(next(iter(trainer.stream)), train=True)

    def step(factor: float) -> float:
        with precision.autocast(trainer.device, trainer.dtype):
            loss = trainer.loss_fn(trainer.model(x), y)
        s.backward(loss * factor)
        return float(s.step(clip=1.0))

    scale = s.scaler.get_scale()
    before = [p.detach().clone() for p in s.module.parameters()]
    assert not math.isfinite(step(math.inf))  # every gradient overflows: the update must be skipped
    assert s.scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, s.module.parameters()))
    assert math.isfinite(step(1.0))  # a normal step updates and keeps the scale (growth only after 2000)
    assert s.scaler.get_scale() == scale / 2
    assert any(not torch.equal(a, b) for a, b in zip(before, s.module.parameters()))


def test_gpt_attention_runs_on_the_flash_kernel():
    """With only the flash backend allowed, SDPA raises if it cannot use it for the GPT's shapes (bf16,
    causal, head size 64 as in the 350M benchmark model)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = GPT(vocab_size=64, block_size=128, n_layer=2, n_head=4, n_embd=256).cuda()
    x = torch.randint(0, 64, (4, 128), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", torch.bfloat16):
        model(x).float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_training_tracks_fp32(tmp_path):
    """bf16 autocast (fp32 weights and optimizer) against fp32 without TF32, 60 steps in which the loss
    falls by more than a fifth: per-window losses within 8 %. (bf16 learns a little slower here: on the
    CPU, with CPU autocast, the gap grew to 4.4 % by step 60; a bf16 path that stalls or learns at half
    the rate is 12-30 % off.)"""
    fp32 = _window_losses(tmp_path / "fp32", ["train.precision=fp32", "train.tf32=false", "train.steps=60"])
    bf16 = _window_losses(tmp_path / "bf16", ["train.precision=bf16", "train.steps=60"])
    assert fp32[-1] < 0.8 * fp32[0]
    assert bf16 == pytest.approx(fp32, rel=0.08)


def test_compiled_training_matches_eager(tmp_path):
    """Same seed, fp32 without TF32: the compiled model's per-window losses stay within 0.5 % of eager
    (Inductor fuses and reorders floating-point operations, so not bit for bit)."""
    fp32 = ["train.precision=fp32", "train.tf32=false", "train.steps=30"]
    eager = _window_losses(tmp_path / "eager", fp32)
    compiled = _window_losses(tmp_path / "compiled", [*fp32, "train.compile=true"])
    assert eager[-1] < 0.85 * eager[0]
    assert compiled == pytest.approx(eager, rel=5e-3)


def test_out_of_memory_is_named_and_leaves_a_snapshot_the_viewer_opens(tmp_path):
    from hpc_dl.training.trainer import OutOfMemory

    # One 256 GiB activation (65,536 samples x 2^20 hidden units x 4 bytes): more than any GPU has.
    args = ["data.name=synthetic_tabular", "data.shape=[64]", "data.samples=65536", "data.batch_size=65536",
            "model.name=mlp", "model.hidden=[1048576]", "train.steps=2", "log.utilisation=false"]  # fmt: skip
    with pytest.raises(OutOfMemory) as caught:
        train(config.load(None, [*QUIET, *args]), run_dir=tmp_path / "run")
    line = str(caught.value)
    assert line.startswith("out of memory on rank 0 (") and "cuda" in line and "batch 65536 x (64,)" in line
    snapshot = tmp_path / "run" / "memory" / "rank0_oom.pickle"
    assert f"allocator snapshot {snapshot}" in line
    import pickle  # our own file, written by torch.cuda.memory._dump_snapshot just now

    state = pickle.loads(snapshot.read_bytes())
    assert "segments" in state  # what https://pytorch.org/memory_viz draws
