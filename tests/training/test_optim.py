"""Optimizers and LR schedules."""

import math

import pytest
import torch
from torch import nn

from hpc_dl import config
from hpc_dl.training.optim import Schedule, build_optimizer, build_scheduler


def _lrs(overrides, steps=10):
    cfg = config.load(None, overrides)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg.optim, torch.device("cpu"))
    sched = build_scheduler(opt, cfg.optim, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, lrs


def test_warmup_then_cosine_to_min_ratio():
    _, lrs = _lrs(["optim.lr=1.0", "optim.warmup_steps=4", "optim.min_lr_ratio=0.1", "train.steps=10"])
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)  # the peak right after warm-up
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    expected_last = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 6))
    assert lrs[-1] == pytest.approx(expected_last)


def test_step_and_constant_schedules():
    _, lrs = _lrs(["optim.lr=1.0", "optim.schedule=step", "optim.step_size=3", "optim.gamma=0.5"])
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125])
    _, lrs = _lrs(["optim.lr=0.3", "optim.schedule=constant"])
    assert lrs == pytest.approx([0.3] * 10)


def test_schedule_state_survives_a_scheduler_round_trip():
    fn = Schedule("cosine", 100, 10, 0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1), fn)
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == fn.__dict__


@pytest.mark.parametrize(
    ("overrides", "kind", "checks"),
    [
        (
            ["optim.name=sgd", "optim.momentum=0.8", "optim.nesterov=true"],
            torch.optim.SGD,
            {"momentum": 0.8, "nesterov": True},
        ),
        (["optim.name=adam", "optim.betas=[0.8, 0.95]"], torch.optim.Adam, {"betas": (0.8, 0.95)}),
        (["optim.name=adamw", "optim.eps=1e-6"], torch.optim.AdamW, {"eps": 1e-6}),
    ],
)
def test_optimizers_get_their_settings(overrides, kind, checks):
    opt, _ = _lrs(overrides, steps=1)
    assert type(opt) is kind
    for key, value in checks.items():
        assert opt.param_groups[0][key] == value


def test_no_weight_decay_on_biases():
    opt, _ = _lrs(["optim.weight_decay=0.1"], steps=1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and [p.dim() for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and [p.dim() for p in no_decay["params"]] == [1]
