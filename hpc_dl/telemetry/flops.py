"""Model FLOPs of one training step, counted by PyTorch, and the transformer's analytic count.

``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of every
matmul, convolution and attention in the forward and backward pass. Counting runs on
the meta device: shapes only, no memory, no arithmetic, so a 7B model costs nothing.
MFU uses this counted figure for every model; for the GPT the analytic
6*N*tokens + 12*layers*T*d*tokens (PaLM, appendix B) is reported beside it as a cross-check.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hpc_dl import models
from hpc_dl.data.spec import DataSpec


@dataclass
class StepFlops:
    total: int  # forward + backward of one micro-batch
    forward: int
    per_module: dict[str, int]  # module path -> forward + backward FLOPs (top levels)
    batch_size: int

    @property
    def per_sample(self) -> float:
        return self.total / self.batch_size


def _meta_model(model_cfg, spec: DataSpec) -> nn.Module:
    """The config's model built on the meta device, or a copy of a given module moved there."""
    if isinstance(model_cfg, nn.Module):
        return copy.deepcopy(model_cfg).to("meta")
    with torch.device("meta"):
        return models.build(model_cfg, spec)


def count(model_cfg, spec: DataSpec, batch_size: int, depth: int = 2) -> StepFlops:
    """FLOPs of forward + backward for one micro-batch of ``batch_size`` on the meta device
    (``model_cfg``: a model section, or a module of one's own)."""
    model = _meta_model(model_cfg, spec).train()
    with torch.device("meta"):
        x = models.example_input(spec, batch_size)
    with FlopCounterMode(display=False) as forward:
        model(x)
    # One counter around forward and backward, so backward FLOPs are credited to their modules too.
    with FlopCounterMode(display=False, depth=depth) as step:
        model(x).float().sum().backward()
    per_module = {name: sum(ops.values()) for name, ops in step.get_flop_counts().items()}
    return StepFlops(step.get_total_flops(), forward.get_total_flops(), per_module, batch_size)


def gpt_analytic(model_cfg, spec: DataSpec, batch_size: int) -> int:
    """6 * N * tokens + 12 * n_layer * T * d * tokens, with N the parameters of the matmuls
    (embedding lookups and LayerNorms do no matmul work; a tied output layer counts once)."""
    t, d, L = spec.input_shape[0], model_cfg.n_embd, model_cfg.n_layer
    model = _meta_model(model_cfg, spec)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    tokens = batch_size * t
    return 6 * n * tokens + 12 * L * t * d * tokens


def format_table(name: str, flops: StepFlops, params: dict[str, int], peak_tflops: float | None) -> str:
    """Per-module table (FLOPs, share, parameters) and the step time the peak rate allows."""
    root = next(k for k in flops.per_module if k != "Global" and "." not in k)
    counted = {k[len(root) + 1 :]: v for k, v in flops.per_module.items() if k.startswith(root + ".")}
    rows = [(k, counted[k]) for k in params if k in counted]  # in the model's own order
    width = max([len("module")] + [len(k) for k, _ in rows])
    lines = [f"{name}: forward + backward of one micro-batch of {flops.batch_size}", ""]
    lines.append(f"{'module':<{width}}  {'GFLOP':>12}  {'share':>7}  {'parameters':>12}")
    for module, value in rows:
        lines.append(
            f"{module:<{width}}  {value / 1e9:>12.4f}  {value / flops.total:>7.1%}  {params.get(module, 0):>12,}"
        )
    lines.append(f"{'total':<{width}}  {flops.total / 1e9:>12.4f}  {1:>7.0%}  {params['']:>12,}")
    per_sample, forward = flops.per_sample / 1e9, flops.forward / flops.batch_size / 1e9
    lines.append(f"\nper sample: {per_sample:.4f} GFLOP (forward {forward:.4f})")
    if peak_tflops:
        bound = flops.total / (peak_tflops * 1e12)
        lines.append(f"lower bound on the step time at {peak_tflops:g} TFLOP/s: {bound * 1e3:.4f} ms "
                     "(a pass cannot take less than its FLOPs over the peak rate)")  # fmt: skip
    return "\n".join(lines)


def parameters_by_module(model_cfg, spec: DataSpec) -> dict[str, int]:
    model = _meta_model(model_cfg, spec)
    return {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_modules()}
