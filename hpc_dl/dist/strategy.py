"""How a step is executed across devices. The trainer calls only these methods,
so DDP and DeepSpeed slot in as subclasses without touching the loop.

``Strategy`` itself is the single-process case: one device, no process group,
no MPI, no cluster.
"""

import contextlib
import math
import os

import torch
from torch import nn

from hpc_dl.errors import ConfigError


def select_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        raise ConfigError(f"train.device = 'cuda' but no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible})")
    if choice in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class Strategy:
    name = "single"

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1):
        self.device, self.rank, self.world_size = device, rank, world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, module: nn.Module, optimizer, scheduler, scaler, wrap=lambda m: m) -> nn.Module:
        """Take ownership of the training objects; return the module to call in forward.
        ``wrap`` (e.g. torch.compile) is applied to what the strategy will run."""
        self.module, self.optimizer, self.scheduler, self.scaler = module, optimizer, scheduler, scaler
        return wrap(module)

    def no_sync(self, sync: bool):
        """Context for one micro-step; gradients are only synchronised when ``sync``."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, clip: float | None) -> torch.Tensor:
        """Clip, update, advance the LR schedule. Returns the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(self.module.parameters(), clip or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def state_dict(self) -> dict:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:
        pass


def build(cfg) -> Strategy:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != 1:
        raise ConfigError(
            f"dist.strategy = '{cfg.dist.strategy}' runs one process, but WORLD_SIZE={world} processes were started"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return Strategy(select_device(cfg.train.device, local_rank))
