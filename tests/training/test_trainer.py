"""End-to-end training runs through the CLI and the library."""

import json
import shutil

import pytest
import torch

from hpc_dl import checkpoint, config
from hpc_dl.checkpoint import CheckpointDir
from hpc_dl.cli import main
from hpc_dl.distributed.strategy import Strategy
from hpc_dl.errors import ConfigError
from hpc_dl.training.run import train
from tests.conftest import CONFIGS, run_cli

pytestmark = pytest.mark.slow


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_embedded_default_reaches_95_percent_on_digits(default_run):
    run_dir, proc = default_run
    summary = _summary(run_dir)
    assert summary["model"] == "cnn" and summary["data"] == "digits" and summary["device"] == "cpu"
    assert summary["test"]["accuracy"] >= 0.95
    assert f"results: {run_dir.name}" in proc.stdout.replace("runs/", "")


def test_breast_cancer_mlp_reaches_95_percent(tmp_path):
    run_cli("train", CONFIGS / "breast_cancer_mlp.yaml", "--run-dir", tmp_path / "bc")
    summary = _summary(tmp_path / "bc")
    assert summary["test"]["accuracy"] >= 0.95 and summary["test"]["samples"] == 114


RESUME_RUN = ["train.steps=40", "train.grad_accum=2", "train.eval_every=10", "checkpoint.every=20", "log.every=5"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume") / "a"
    run_cli("train", CONFIGS / "digits_cnn.yaml", *RESUME_RUN, "--run-dir", run_dir)
    return run_dir


def _assert_same_final_state(a, b):
    sa, sb = checkpoint.load(a / "checkpoints/step_00000040.pt"), checkpoint.load(b / "checkpoints/step_00000040.pt")
    for key, tensor in sa["model"].items():
        assert torch.equal(tensor, sb["model"][key]), key
    for pid, state in sa["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["optimizer"]["state"][pid][k]), (pid, k)
    assert sa["scheduler"] == sb["scheduler"] and sa["data"] == sb["data"]


def _records_after(run_dir, step):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    exact = ("split", "step", "epoch", "loss", "accuracy", "lr", "grad_norm", "samples")  # not the wall-clock ones
    return [{k: v for k, v in json.loads(x).items() if k in exact} for x in lines if json.loads(x)["step"] > step]


def test_resume_in_a_new_process_is_bitwise_exact(uninterrupted, tmp_path):
    # step 20 is mid-epoch (19 micro-batches of 64 per epoch, 2 per step), with dropout and BatchNorm
    half = uninterrupted / "checkpoints" / "step_00000020.pt"
    proc = run_cli("train", CONFIGS / "digits_cnn.yaml", *RESUME_RUN, "--run-dir", tmp_path / "b", "--resume", half)
    assert f"resumed from {half} at step 20" in proc.stdout
    _assert_same_final_state(uninterrupted, tmp_path / "b")
    assert _records_after(tmp_path / "b", 20) == _records_after(uninterrupted, 20)
    assert _summary(tmp_path / "b")["test"] == _summary(uninterrupted)["test"]


def test_resume_auto_skips_a_corrupt_latest_checkpoint(uninterrupted, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(uninterrupted, copy)
    final = copy / "checkpoints" / "step_00000040.pt"
    reference = tmp_path / "reference.pt"
    shutil.copy(final, reference)
    final.write_bytes(final.read_bytes()[:4096])  # the job died while... a bad disk, a full quota
    proc = run_cli("train", CONFIGS / "digits_cnn.yaml", *RESUME_RUN, "--run-dir", copy, "--resume", "auto")
    assert "step_00000040.pt is corrupt or truncated" in proc.stderr
    assert "at step 20" in proc.stdout
    _assert_same_final_state(uninterrupted, copy)
    # metrics.jsonl was cut back to step 20 and redone: one record per step, none twice
    steps = [
        r["step"] for r in map(json.loads, (copy / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_fresh_run_refuses_a_directory_with_checkpoints(uninterrupted, capsys):
    before = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    assert main(["train", "--run-dir", str(uninterrupted)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == before


def test_checkpoint_of_another_model_is_a_clear_error(uninterrupted, tmp_path, capsys):
    ckpt = uninterrupted / "checkpoints" / "step_00000040.pt"
    code = main(
        ["train", str(CONFIGS / "breast_cancer_mlp.yaml"), "--run-dir", str(tmp_path / "x"), "--resume", str(ckpt)]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"checkpoint {ckpt} does not fit this run" in err and "Traceback" not in err


def test_resume_auto_in_an_empty_directory_starts_fresh(tmp_path):
    cfg = config.load(CONFIGS / "breast_cancer_mlp.yaml", ["train.steps=15", "log.progress=off", "log.plots=false"])
    summary = train(cfg, run_dir=tmp_path / "new", resume="auto")
    assert summary["resumed_from"] is None and summary["steps"] == 15


def _quick(tmp_path, *overrides, name="run"):
    cfg = config.load(None, ["train.steps=12", "log.every=4", "log.progress=off", "log.plots=false", *overrides])
    return train(cfg, run_dir=tmp_path / name), tmp_path / name


def _params(run_dir):
    return checkpoint.load(CheckpointDir(run_dir / "checkpoints", 1).latest())["model"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    mlp = ["data.name=breast_cancer", "model.name=mlp", "model.dropout=0", "optim.name=sgd", "train.grad_clip=null"]
    _quick(tmp_path, *mlp, "data.batch_size=64", name="big")
    _quick(tmp_path, *mlp, "data.batch_size=32", "train.grad_accum=2", name="accum")
    big, accum = _params(tmp_path / "big"), _params(tmp_path / "accum")
    for key in big:
        torch.testing.assert_close(big[key], accum[key], rtol=1e-5, atol=1e-6)


def test_seeded_runs_repeat_and_seeds_differ(tmp_path):
    _quick(tmp_path, "train.deterministic=true", name="a")
    _quick(tmp_path, "train.deterministic=true", name="b")
    _quick(tmp_path, "train.deterministic=true", "train.seed=1", name="c")
    a, b, c = (_params(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_evaluating_more_often_does_not_change_training(tmp_path):
    _quick(tmp_path, "train.eval_every=0", name="rare")
    _quick(tmp_path, "train.eval_every=3", name="often")
    rare, often = _params(tmp_path / "rare"), _params(tmp_path / "often")
    assert all(torch.equal(rare[k], often[k]) for k in rare)


def test_gradient_clipping_bounds_the_update():
    model = torch.nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    strategy = Strategy(config.load().dist, torch.device("cpu"))
    strategy.setup(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False))
    strategy.backward(model(torch.full((8, 4), 10.0)).sum())
    norm = strategy.step(clip=0.5)
    assert norm > 50  # reported before clipping
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-5)  # lr 1 x clipped gradient
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step


def test_evaluation_every_n_steps_and_at_the_end(tmp_path):
    _, run_dir = _quick(tmp_path, "train.eval_every=5")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [5, 10, 12]
    assert [r["step"] for r in records if r["split"] == "test"] == [12]
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8, 12]


def test_epochs_set_the_number_of_steps(tmp_path):
    cfg = config.load(None, ["train.epochs=2", "train.grad_accum=2", "log.progress=off", "log.plots=false"])
    summary = train(cfg, run_dir=tmp_path / "e")
    # 19 micro-batches of 64 per epoch make 9 whole steps of 2 x 64: an epoch ends at a step's end
    assert summary["steps"] == 18 and summary["epochs"] == 2.0


@pytest.mark.parametrize("switches", [["train.precision=bf16"], ["train.channels_last=true"], ["optim.name=adam"]])
def test_precision_and_layout_switches_train(tmp_path, switches):
    summary, run_dir = _quick(tmp_path, "train.steps=30", *switches)
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] and summary["test"]["accuracy"] > 0.5
    assert summary["precision"] == ("bfloat16" if "bf16" in switches[0] else "fp32")


def test_fp16_without_a_gpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.precision = 'fp16' needs a CUDA device"):
        _quick(tmp_path, "train.precision=fp16")


def test_cuda_requested_without_a_gpu_is_a_config_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="train.device = 'cuda' but no CUDA device is visible"):
        _quick(tmp_path, "train.device=cuda")


def test_torch_compile_trains(tmp_path):
    summary, _ = _quick(tmp_path, "train.compile=true", "data.name=breast_cancer", "model.name=mlp", "train.steps=20")
    assert summary["test"]["accuracy"] > 0.8
