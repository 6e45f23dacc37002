"""A resume compares the checkpoint's config with the run's: settings hpc_dl added since the
checkpoint was written (data.task) do not block it at their defaults, and do when changed."""

import pytest

from hpc_dl import config
from hpc_dl.errors import ConfigError
from hpc_dl.training.trainer import _check_config


def _without(tree: dict, dotted: str) -> dict:
    section, key = dotted.split(".")
    return {**tree, section: {k: v for k, v in tree[section].items() if k != key}}


def test_a_setting_added_since_the_checkpoint_is_accepted_at_its_default():
    cfg = config.load("csv_mlp", ["data.path=x.csv"])
    older = _without(config.to_dict(cfg), "data.task")  # written before data.task existed
    _check_config("step_1.pt", {"config": older}, cfg)


def test_the_added_setting_changed_or_a_real_change_is_refused():
    cfg = config.load("csv_mlp", ["data.path=x.csv", "data.task=regression"])
    older = _without(config.to_dict(cfg), "data.task")
    with pytest.raises(ConfigError, match=r"data.task: None -> 'regression'"):
        _check_config("step_1.pt", {"config": older}, cfg)
    changed = config.load("csv_mlp", ["data.path=x.csv", "model.dropout=0.3"])
    with pytest.raises(ConfigError, match="model.dropout"):
        _check_config("step_1.pt", {"config": config.to_dict(cfg)}, changed)
