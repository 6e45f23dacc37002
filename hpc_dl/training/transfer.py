"""Transfer learning: start from trained weights, replace the head, freeze the backbone.

The head is the model's last ``nn.Linear`` (every classifier in the zoo ends in one).
The model is built for the new data first, so its head already has the new number of
classes; the weights file fills everything else, and any other mismatch is an error
naming the tensor. Frozen layers are frozen completely: their parameters get no
gradients, and their BatchNorm layers run in inference mode (running statistics
neither used from the batch nor updated), as a frozen feature extractor should.

Unfreezing later is a second run from the first one's directory, with ``head=keep``,
``freeze=none`` and a ``backbone_lr`` below 1 (discriminative learning rates). A second
run rather than a switch mid-run because DDP and DeepSpeed fix the set of trained
parameters when they wrap the model.
"""

import sys

from torch import nn

from hpc_dl.errors import ConfigError, UserError
from hpc_dl.training.weights import read_state_dict


def head_name(model: nn.Module) -> str:
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier head to replace")
    return linears[-1]


def _frozen_modules(model: nn.Module, freeze: str, head: str) -> list[str]:
    """Names of the modules whose parameters are frozen, in registration order."""
    names = [name for name, _ in model.named_modules() if name]
    if freeze == "none":
        return []
    if freeze == "backbone":
        return [n for n in names if n != head and not n.startswith(head + ".") and not head.startswith(n + ".")]
    if freeze not in names:
        tops = ", ".join(name for name, _ in model.named_children())
        raise ConfigError(f"transfer.freeze = '{freeze}': no such layer; the model's top-level layers are {tops}")
    # The layer, everything registered before it, and everything inside it.
    upto = names.index(freeze)
    return [n for i, n in enumerate(names) if i <= upto or n.startswith(freeze + ".")]


def _bn_inference(module: nn.Module, _args) -> None:
    module.training = False  # before every forward: model.train() cannot switch it back


def _load_weights(model: nn.Module, cfg, head: str) -> dict:
    """Load ``cfg.weights`` into ``model`` (all but its head with transfer.head=new), strictly by name and shape."""
    state, path = read_state_dict(cfg.weights)
    own = model.state_dict()
    if cfg.head == "new":
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        own = {k: v for k, v in own.items() if not k.startswith(head + ".")}
    missing = [k for k in own if k not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(
            f"{path}: no weights for {shown} ({len(missing)} tensors of this model); "
            "was it saved from the same architecture?"
        )
    for k, v in own.items():
        if state[k].shape != v.shape:
            raise UserError(
                f"{path}: '{k}' has shape {tuple(state[k].shape)}, this model needs {tuple(v.shape)}"
                + (" (the number of classes differs: use transfer.head=new)" if k.startswith(head + ".") else "")
            )
    unused = [k for k in state if k not in own]
    if unused:  # e.g. GoogLeNet's auxiliary classifiers, which hpc_dl does not build
        print(f"warning: {path}: {len(unused)} tensors not used by this model: {', '.join(unused[:5])}",
              file=sys.stderr)  # fmt: skip
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    return {"weights": str(path), "loaded": len(own)}


def apply(model: nn.Module, cfg) -> tuple[dict[str, float], dict]:
    """Load ``cfg.weights`` into ``model`` (except a new head) and freeze; ``cfg`` is the transfer section.
    Returns the LR scale per trainable parameter name and a report for the run's summary."""
    head = head_name(model)
    report: dict = {"head": head}
    if cfg.weights:
        report.update(_load_weights(model, cfg, head))

    freeze = cfg.freeze or ("backbone" if cfg.weights else "none")
    frozen = _frozen_modules(model, freeze, head)
    for name in frozen:
        module = model.get_submodule(name)
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_bn_inference)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"transfer.freeze = '{freeze}' freezes every parameter; nothing would train")
    scales = {n: 1.0 if n.startswith(head + ".") else cfg.backbone_lr for n in trainable}
    report.update(
        freeze=freeze,
        frozen_parameters=sum(p.numel() for p in model.parameters() if not p.requires_grad),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    return scales, report
