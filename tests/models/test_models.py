"""The core models: shapes, parameter counts, bad shapes."""

import pytest
import torch
from torch import nn

from hpc_dl import config, models
from hpc_dl.data.spec import DataSpec
from hpc_dl.errors import ConfigError

TABULAR = DataSpec(input_shape=(30,), num_classes=2, class_names=["a", "b"])
DIGITS = DataSpec(input_shape=(1, 8, 8), num_classes=10, class_names=list("0123456789"))


def test_perceptron_is_one_linear_layer():
    model = models.build(config.MLPConfig(hidden=[]), TABULAR)
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    assert models.count_parameters(model) == 31  # 30 weights + bias, one logit for a binary task


def test_mlp_width_depth_activation():
    model = models.build(config.MLPConfig(hidden=[16, 8], activation="tanh", dropout=0.1), DIGITS)
    assert models.count_parameters(model) == (64 * 16 + 16) + (16 * 8 + 8) + (8 * 10 + 10)
    assert sum(isinstance(m, nn.Tanh) for m in model) == 2 and sum(isinstance(m, nn.Dropout) for m in model) == 2
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_cnn_output_shape_and_parameter_count():
    model = models.build(config.CNNConfig(channels=[4, 8], batch_norm=False, hidden=0), DIGITS)
    # conv 1->4 (3x3+bias), conv 4->8, then 8 x 2 x 2 features -> 10 classes
    assert models.count_parameters(model) == (9 * 4 + 4) + (36 * 8 + 8) + (32 * 10 + 10)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_cnn_rejects_tabular_data_and_too_many_pooling_blocks():
    with pytest.raises(ConfigError, match="needs image input"):
        models.build(config.CNNConfig(), TABULAR)
    with pytest.raises(ConfigError, match="4 pooling blocks halve 8x8 input below 1 pixel"):
        models.build(config.CNNConfig(channels=[4, 4, 4, 4]), DIGITS)


def test_registry_matches_the_config_schema():
    import typing

    variants = typing.get_args(config.ModelConfig)
    names = {n for v in variants for n in typing.get_args(typing.get_type_hints(v)["name"])}
    assert names == set(models.MODELS)
