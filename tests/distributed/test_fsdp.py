"""FSDP2 and resume on another world size, with real torchrun/gloo processes on the CPU.

One small GPT (dropout 0, fp32) on random tokens, 12 samples per optimizer step throughout:
2 ranks x 3 x 2 micro-batches (FSDP, DDP), 1 x 12 (one process), 1 x 3 x 4 and 3 x 2 x 2
(resumed on 1 and 3 ranks). The same samples make every step, so the runs differ only in the
order of floating-point sums.
"""

import json

import pytest
import torch

from hpc_dl.checkpoint import dcp
from tests.conftest import run_cli
from tests.distributed.launch import torchrun

pytestmark = pytest.mark.slow

GPT = ["data.name=synthetic_tokens", "data.num_classes=64", "data.block_size=16", "data.samples=128",
       "model.name=gpt", "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.dropout=0",
       "optim.name=adamw", "optim.lr=3e-3", "train.steps=12", "train.eval_every=0", "train.precision=fp32",
       "log.every=3", "log.plots=false", "checkpoint.every=6"]  # fmt: skip
TWO = ["data.batch_size=3", "train.grad_accum=2"]
# Over 12 AdamW steps on 2 ranks, summing in another order moves the weights by about 1e-6.
ATOL = 1e-5


def _losses(run_dir, after=0):
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train" and r["step"] > after]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _weights(run_dir, step=12, part="model"):
    return dcp.read_full(run_dir / "checkpoints" / f"step_{step:08d}", part)


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=ATOL, rtol=0) for k in a)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """2 ranks, activation checkpointing on, checkpoints written in the background."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    proc = torchrun("train", *GPT, *TWO, "dist.strategy=fsdp", "train.activation_checkpointing=full",
                    "checkpoint.async_save=true", "--run-dir", out)  # fmt: skip
    return out, proc


def test_fsdp_matches_ddp_and_one_process_on_the_same_global_batch(fsdp_run, tmp_path):
    out, _ = fsdp_run
    summary = _summary(out)
    assert (summary["strategy"], summary["world_size"], summary["global_batch_size"]) == ("fsdp", 2, 12)
    a, b = summary["parameter_fingerprints"]
    assert a == b  # the gathered parameters are one model
    ddp = torchrun("train", *GPT, *TWO, "dist.strategy=ddp", "checkpoint.format=dcp", "--run-dir", tmp_path / "ddp")
    run_cli("train", *GPT, "data.batch_size=12", "checkpoint.format=dcp", "--run-dir", tmp_path / "one")
    assert ddp.returncode == 0
    losses = _losses(out)
    assert len(losses) == 4
    assert losses == pytest.approx(_losses(tmp_path / "ddp"), rel=1e-5)
    assert losses == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    assert _close(_weights(out), _weights(tmp_path / "ddp")) and _close(_weights(out), _weights(tmp_path / "one"))
    # FSDP: one part per rank, written in parallel; DDP: replicas, so rank 0 writes them all
    assert sorted(p.name for p in (out / "checkpoints" / "step_00000012").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]  # fmt: skip
    assert [p.name for p in (tmp_path / "ddp" / "checkpoints" / "step_00000012").glob("*.distcp")] == ["__0_0.distcp"]
    # DDP's DCP folder resumes under FSDP (one rank here): the format is the strategy's common ground
    run_cli("train", *GPT, "train.steps=14", "data.batch_size=12", "dist.strategy=fsdp", "--run-dir", tmp_path / "f",
            "--resume", tmp_path / "ddp" / "checkpoints" / "step_00000012")  # fmt: skip
    assert _summary(tmp_path / "f")["resumed_from"].endswith("step_00000012")


def test_fsdp_resume_on_the_same_world_size_is_exact(fsdp_run, tmp_path):
    out, _ = fsdp_run
    torchrun("train", *GPT, *TWO, "dist.strategy=fsdp", "train.activation_checkpointing=full",
             "--run-dir", tmp_path / "again", "--resume", out / "checkpoints" / "step_00000006")  # fmt: skip
    assert _summary(tmp_path / "again")["parameter_fingerprints"] == _summary(out)["parameter_fingerprints"]
    assert _losses(tmp_path / "again") == _losses(out, after=6)


def test_fsdp_checkpoint_of_2_ranks_resumes_on_1_with_accumulation_adjusted(fsdp_run, tmp_path):
    out, _ = fsdp_run
    proc = run_cli("train", *GPT, "data.batch_size=3", "dist.strategy=fsdp", "--run-dir", tmp_path / "one",
                   "--resume", out / "checkpoints" / "step_00000006")  # fmt: skip
    assert "train.grad_accum 1 -> 4, so a step is still 1 x 3 x 4 = 12 samples" in proc.stderr
    assert _summary(tmp_path / "one")["global_batch_size"] == 12
    assert _losses(tmp_path / "one") == pytest.approx(_losses(out, after=6), rel=1e-5)  # the same samples
    assert _close(_weights(tmp_path / "one"), _weights(out))
    assert _close(_weights(tmp_path / "one", part="optimizer"), _weights(out, part="optimizer"))


def test_an_fsdp_checkpoint_resumes_in_a_plain_process(fsdp_run, tmp_path):
    out, _ = fsdp_run
    run_cli("train", *GPT, "data.batch_size=12", "--run-dir", tmp_path / "single",
            "--resume", out / "checkpoints" / "step_00000006")  # fmt: skip
    assert _summary(tmp_path / "single")["strategy"] == "single"
    assert _losses(tmp_path / "single") == pytest.approx(_losses(out, after=6), rel=1e-5)


def test_fsdp_checkpoint_of_2_ranks_resumes_on_3(fsdp_run, tmp_path):
    out, _ = fsdp_run
    torchrun("train", *GPT, "data.batch_size=2", "train.grad_accum=2", "dist.strategy=fsdp", "--run-dir",
             tmp_path / "three", "--resume", out / "checkpoints" / "step_00000006", nproc=3)  # fmt: skip
    assert _summary(tmp_path / "three")["world_size"] == 3
    assert _losses(tmp_path / "three") == pytest.approx(_losses(out, after=6), rel=1e-5)
    assert _close(_weights(tmp_path / "three"), _weights(out))
    moments = _weights(tmp_path / "three", part="optimizer")  # AdamW's step count and both moments
    assert {k.rsplit(".", 1)[1] for k in moments} == {"step", "exp_avg", "exp_avg_sq"}
    assert _close(moments, _weights(out, part="optimizer"))


def test_a_global_batch_that_cannot_be_kept_is_refused_with_the_numbers(fsdp_run, tmp_path):
    out, _ = fsdp_run
    proc = run_cli("train", *GPT, "data.batch_size=5", "train.grad_accum=2", "--run-dir", tmp_path / "x",
                   "--resume", out / "checkpoints" / "step_00000006", check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("its run took 2 x 3 x 2 = 12 samples per step (ranks x data.batch_size x train.grad_accum); this one "
            "would take 1 x 5 x 2 = 10") in proc.stderr  # fmt: skip
    assert "set data.batch_size=4 train.grad_accum=3" in proc.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()  # refused before anything was written


def test_consolidate_and_predict_read_an_fsdp_checkpoint(fsdp_run, tmp_path):
    out, _ = fsdp_run
    target = tmp_path / "model.pt"
    run_cli("consolidate", out, "--out", target)
    whole = torch.load(target, weights_only=True)
    assert _close(whole, _weights(out)) and all(v.dtype == torch.float32 for v in whole.values())
    from hpc_dl.training.weights import read_state_dict

    state, path = read_state_dict(out)  # what export, predict, explain and transfer.weights read
    assert path.name == "step_00000012" and _close(state, whole)
