"""Optimizers and learning-rate schedules."""

import math

import torch
from torch import nn


def build_optimizer(
    model: nn.Module, cfg, device: torch.device, lr_scale: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """``lr_scale``: a factor on ``cfg.lr`` per parameter name (transfer learning's lower backbone LR)."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            # Decay matrices and conv kernels, not biases or norm scales (as nanoGPT and most recipes do).
            groups.setdefault((p.dim() >= 2, (lr_scale or {}).get(name, 1.0)), []).append(p)
    groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
        for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (-kv[0][1], not kv[0][0]))
    ]  # full-LR groups first: the trainer logs param_groups[0]'s LR
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    # The fused CUDA kernel updates all parameters in a few launches.
    return adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=device.type == "cuda")


class Schedule:
    """LR multiplier for optimizer step ``s`` (a callable object, so LambdaLR saves its state)."""

    def __init__(self, kind: str, total_steps: int, warmup: int, min_ratio=0.0, step_size=1, gamma=1.0):
        self.kind, self.total, self.warmup = kind, total_steps, warmup
        self.min_ratio, self.step_size, self.gamma = min_ratio, step_size, gamma

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / (self.warmup + 1)
        if self.kind == "cosine":
            progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.gamma ** ((s - self.warmup) // self.step_size)
        return 1.0


def build_scheduler(optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    fn = Schedule(cfg.schedule, total_steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.step_size, cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
