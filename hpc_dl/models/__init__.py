"""Model registry: ``model.name`` in the config picks a builder here.

Models are plain ``nn.Module``s that know nothing of hpc_dl's trainer. A builder
takes the model's config section and the data's DataSpec (input shape, number of
classes, task) and returns the module. Binary tasks get one output logit.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hpc_dl import config
from hpc_dl.data.spec import DataSpec
from hpc_dl.errors import ConfigError
from hpc_dl.models import cifar_resnet, vision
from hpc_dl.models.cnn import SmallCNN
from hpc_dl.models.gpt import GPT
from hpc_dl.models.lenet import LeNet5
from hpc_dl.models.mlp import MLP


def _image(spec: DataSpec, name: str, size: int | None = None) -> tuple[int, int, int]:
    if len(spec.input_shape) != 3:
        raise ConfigError(f"model.name = '{name}' needs image input (C, H, W); the data gives shape {spec.input_shape}")
    c, h, w = spec.input_shape
    if size and (h, w) != (size, size):
        raise ConfigError(
            f"model.name = '{name}' needs {size}x{size} images; the data gives {h}x{w} (see data.image_size)"
        )
    return c, h, w


def _mlp(cfg, spec):
    if spec.task == "lm":
        raise ConfigError("model.name = 'mlp' does not predict token sequences; use model.name = 'gpt'")
    return MLP(spec.input_shape, spec.num_outputs, cfg.hidden, cfg.activation, cfg.dropout)


def _cnn(cfg, spec):
    _image(spec, "cnn")
    return SmallCNN(
        spec.input_shape, spec.num_outputs, cfg.channels, cfg.kernel_size, cfg.batch_norm, cfg.hidden, cfg.dropout
    )


def _lenet(cfg, spec):
    return LeNet5(_image(spec, "lenet5", 32)[0], spec.num_outputs)


def _torchvision(cfg, spec):
    c, h, w = _image(spec, cfg.name)
    if min(h, w) < (32 if cfg.small_input else 64):
        hint = "" if cfg.small_input else "; set model.small_input=true for small images"
        raise ConfigError(f"model.name = '{cfg.name}' cannot take {h}x{w} images{hint}")
    return vision.build(cfg.name, c, spec.num_outputs, cfg.small_input)


def _cifar_resnet(cfg, spec):
    return cifar_resnet.CifarResNet(cfg.name, _image(spec, cfg.name)[0], spec.num_outputs, cfg.width)


def _gpt(cfg, spec):
    if spec.task != "lm":
        raise ConfigError(
            f"model.name = 'gpt' needs token sequences (data.name = tokens or synthetic_tokens), not {spec.task} data"
        )
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"model.n_embd = {cfg.n_embd} must be divisible by model.n_head = {cfg.n_head}")
    return GPT(
        spec.num_classes,
        spec.input_shape[0],
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.dropout,
        cfg.bias,
        cfg.tie_weights,
        cfg.pad_vocab_to,
    )


@dataclass
class Entry:
    build: Callable[..., nn.Module]
    default_input: DataSpec  # the input it is meant for, used by `hpc-dl models`
    about: str


_IMAGENET = DataSpec((3, 224, 224), 1000)
_CIFAR = DataSpec((3, 32, 32), 10)
MODELS: dict[str, Entry] = {
    "mlp": Entry(_mlp, DataSpec((30,), 2), "multi-layer perceptron; hidden=[] is a single perceptron"),
    "cnn": Entry(_cnn, DataSpec((1, 8, 8), 10), "small conv-pool CNN (the embedded default)"),
    "lenet5": Entry(_lenet, DataSpec((1, 32, 32), 10), "LeNet-5, 32x32 input, tanh, 61,706 parameters"),
    **{n: Entry(_torchvision, _IMAGENET, f"torchvision {n}; small_input for 32x32") for n in config.TORCHVISION_MODELS},
    **{n: Entry(_cifar_resnet, _CIFAR, f"CIFAR ResNet, {n[6:]} layers") for n in config.CIFAR_RESNETS},
    "gpt": Entry(_gpt, DataSpec((256,), 50257, task="lm"), "GPT-style decoder-only transformer"),
}


def build(cfg, spec: DataSpec) -> nn.Module:
    return MODELS[cfg.name].build(cfg, spec)


def default_config(name: str):
    """The config section for ``name`` with its defaults."""
    return config.load(None, [f"model.name={name}"]).model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once


def example_input(spec: DataSpec, batch: int = 2) -> torch.Tensor:
    if spec.task == "lm":
        return torch.randint(0, spec.num_classes, (batch, *spec.input_shape))
    return torch.randn(batch, *spec.input_shape)


def summary(model: nn.Module, spec: DataSpec) -> list[tuple[str, str, tuple, int]]:
    """(name, type, output shape, parameters) for every leaf module, in call order."""
    rows, hooks = [], []
    for name, module in model.named_modules():
        if not list(module.children()):
            own = sum(p.numel() for p in module.parameters(recurse=False))
            hooks.append(module.register_forward_hook(
                lambda m, i, out, name=name, own=own: rows.append((name, type(m).__name__, tuple(out.shape), own))
            ))  # fmt: skip
    try:
        with torch.no_grad():
            model.eval()(example_input(spec, 1))
    finally:
        for h in hooks:
            h.remove()
    return rows


def format_summary(name: str, model: nn.Module, spec: DataSpec) -> str:
    rows = summary(model, spec)
    width = max(len(r[0]) + len(r[1]) + 3 for r in rows)
    lines = [f"{name}: input {tuple(spec.input_shape)}, {spec.num_classes} classes/vocab", ""]
    lines.append(f"{'layer':<{width}} {'output shape':<22} {'parameters':>12}")
    lines += [f"{f'{n} ({t})':<{width}} {str(s):<22} {p:>12,}" for n, t, s, p in rows]
    lines.append(f"{'total':<{width}} {'':<22} {count_parameters(model):>12,}")
    shared = sum(r[3] for r in rows) - count_parameters(model)
    if shared:
        lines.append(f"({shared:,} parameters are shared between layers and counted once in the total)")
    return "\n".join(lines)


def describe() -> list[tuple[str, int, str]]:
    """(name, parameters at its default input, description) for every model."""
    out = []
    for name, entry in MODELS.items():
        with torch.device("meta"):  # counting needs no memory
            model = entry.build(default_config(name), entry.default_input)
        out.append((name, count_parameters(model), entry.about))
    return out
