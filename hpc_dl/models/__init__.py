"""Model registry: ``model.name`` in the config picks a builder here.

Models are plain ``nn.Module``s that know nothing of hpc_dl's trainer. A builder
takes the model's config section and the data's shape (input shape, number of
classes) and returns the module. Binary tasks get one output logit.
"""

from collections.abc import Callable

from torch import nn

from hpc_dl.data.spec import DataSpec
from hpc_dl.models.cnn import SmallCNN
from hpc_dl.models.mlp import MLP

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda cfg, spec: MLP(spec.input_shape, spec.num_outputs, cfg.hidden, cfg.activation, cfg.dropout),
    "cnn": lambda cfg, spec: SmallCNN(
        spec.input_shape, spec.num_outputs, cfg.channels, cfg.kernel_size, cfg.batch_norm, cfg.hidden, cfg.dropout
    ),
}


def build(cfg, spec: DataSpec) -> nn.Module:
    return BUILDERS[cfg.name](cfg, spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
