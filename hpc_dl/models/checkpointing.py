"""Activation checkpointing (``train.activation_checkpointing``): a checkpointed block keeps only its
input in the forward pass and runs its forward again in the backward pass to get the activations its
gradients need, trading about one extra forward of that block for its activation memory.

``full`` checkpoints every repeated block (the GPT's transformer blocks, the ResNets' residual blocks);
``selective`` every second one (torchtitan's layer-selective option with frequency 2), which halves both
the recomputation and the activation memory saved. The result is the same maths: the recomputation
replays the forward's RNG state (dropout) and does not update BatchNorm's running statistics a second time.

A block is checkpointed in place by giving it a forward that runs its class's forward under
``torch.utils.checkpoint.checkpoint(use_reentrant=False)``, which is what PyTorch's ``checkpoint_wrapper``
with ``CheckpointImpl.NO_REENTRANT`` runs. The wrapper itself is not used: it inserts a
``_checkpoint_wrapped_module`` level into the module tree, and though its hooks strip that prefix from
``state_dict()``, ``named_parameters()`` and ``named_modules()`` of the model keep it, and transfer learning
(``transfer.freeze`` names layers), the optimizer's per-name learning rates and the FLOP counter go by those
names. Here every name, the parameter order and the state_dict keys stay as they are, so checkpoints
written with and without it are interchangeable.

The recomputation calls the class's forward directly, so hooks on the block itself (FSDP's unshard and
reshard, which ``fully_shard(block)`` applied after this registers) run once per step, as they do when
torchtitan shards a ``checkpoint_wrapper``; hooks on the layers inside a block run again.
"""

import contextlib
import functools
import sys

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpc_dl import config
from hpc_dl.errors import ConfigError
from hpc_dl.models import cifar_resnet, gpt

MODES = ("none", "full", "selective")
SUPPORTED = ("gpt", *config.CIFAR_RESNETS, *(n for n in config.TORCHVISION_MODELS if n.startswith("resnet")))


def _block_types() -> tuple[type, ...]:
    kinds: tuple[type, ...] = (gpt.Block, cifar_resnet.BasicBlock)
    tv = sys.modules.get("torchvision.models.resnet")  # imported whenever the model is a torchvision ResNet
    return kinds + (tv.BasicBlock, tv.Bottleneck) if tv else kinds


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, in registration order."""
    kinds = _block_types()
    return [m for m in model.modules() if isinstance(m, kinds)]


def is_checkpointed(block: nn.Module) -> bool:
    return isinstance(vars(block).get("forward"), functools.partial)


def apply(model: nn.Module, mode: str) -> int:
    """Checkpoint the model's blocks in place (``full``: every block, ``selective``: every second one,
    ``none``: nothing); returns how many blocks are checkpointed. Call it before a strategy wraps the model."""
    if mode not in MODES:
        raise ConfigError(f"train.activation_checkpointing = {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "none":
        return 0
    found = blocks(model)
    if not found:
        raise ConfigError(
            f"train.activation_checkpointing = '{mode}': the model ({type(model).__name__}) has no repeated "
            f"blocks to checkpoint; it is supported for model.name = {', '.join(SUPPORTED)}; set it to none"
        )
    chosen = found if mode == "full" else found[1::2]  # torchtitan counts from 1 and wraps every 2nd
    for block in chosen:
        if not is_checkpointed(block):
            block.forward = functools.partial(_checkpointed_forward, block)  # an instance attribute
    return len(chosen)


def _checkpointed_forward(block: nn.Module, *args, **kwargs):
    # A partial of a module-level function (not a closure), so deepcopy and pickle bind the copy's block.
    if torch.compiler.is_compiling():  # compiled, the recomputation is functional: no buffer is updated twice
        return checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)
    recompute = functools.partial(_running_stats_kept, block)
    return checkpoint(
        type(block).forward,
        block,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), recompute()),
        **kwargs,
    )


@contextlib.contextmanager
def _running_stats_kept(block: nn.Module):
    """BatchNorm in training mode updates its running statistics (and batch count) on every call: put
    back what the forward pass left, so the recomputation does not count the batch twice."""
    buffers = [
        b
        for m in block.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    with torch.no_grad():
        saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
