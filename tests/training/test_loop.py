"""The loop in-process, in seconds: Trainer.fit with the single-process strategy on a small synthetic
table, no run directory, no CLI (the end-to-end runs are in test_trainer.py)."""

import math

import pytest
import torch

from hpc_dl import checkpoint, config, data, models
from hpc_dl.distributed import strategy as strategies
from hpc_dl.training import rng
from hpc_dl.training.stop import Stopped
from hpc_dl.training.trainer import Trainer

SMALL = ["data.name=synthetic_tabular", "data.samples=256", "data.batch_size=32", "model.name=mlp",
         "log.every=5", "train.eval_every=0", "log.utilisation=false", "train.stop_signals=[]"]  # fmt: skip


def _trainer(*overrides: str) -> Trainer:
    cfg = config.load(None, [*SMALL, *overrides])
    rng.seed_everything(cfg.train.seed)
    splits = data.build(cfg.data)
    return Trainer(cfg, strategies.build(cfg), splits, models.build(cfg.model, splits.spec))


def test_fit_runs_the_planned_steps_and_reports_every_window():
    trainer = _trainer("train.steps=20")
    records = []
    trainer.observers = [records.append]
    steps = []
    results = trainer.fit(on_step=steps.append)
    assert steps == list(range(1, 21)) and trainer.step == 20
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]  # it learns
    assert set(results) == {"val", "test"} and 0 <= results["test"]["accuracy"] <= 1


def test_grad_accum_sees_accum_batches_per_step():
    trainer = _trainer("train.steps=4", "train.grad_accum=3")
    trainer.fit()
    assert trainer.stream.batch + trainer.stream.epoch * trainer.stream.batches_per_epoch == 12


def test_a_stop_after_a_step_checkpoints_and_raises(tmp_path):
    trainer = _trainer("train.steps=50")

    class Signalled:  # what SignalStop reports once a signal arrived
        received = "USR1"

        def agreed(self, strategy):
            return trainer.step >= 7

    trainer.stop = Signalled()
    ckpts = checkpoint.CheckpointDir(tmp_path, keep_last=2)
    with pytest.raises(Stopped, match="after step 7"):
        trainer.fit(ckpts)
    assert ckpts.latest().name == "step_00000007.pt"
    resumed = _trainer("train.steps=50")
    resumed.load(ckpts.latest())
    assert resumed.step == 7 and resumed.stream.state_dict() == trainer.stream.state_dict()
    for a, b in zip(resumed.model.parameters(), trainer.model.parameters()):
        assert torch.equal(a, b)
