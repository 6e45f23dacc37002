"""How a step is executed across devices. The trainer calls only these methods,
so DDP and DeepSpeed slot in as subclasses without touching the loop.

``Strategy`` itself is the single-process case: one device, no process group,
no MPI, no cluster. ``DDP`` adds the process group and gradient all-reduce;
``hpc_dl.distributed.zero.DeepSpeed`` hands the step to a DeepSpeed engine.
"""

import contextlib
import datetime
import hashlib
import math
import os
import socket

import torch
import torch.distributed as dist
from torch import nn

from hpc_dl.distributed import cluster, preflight, process_group
from hpc_dl.distributed.precision import autocast_dtype
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
    sharded = False  # True: each rank holds part of the model/optimizer state (FSDP, DeepSpeed ZeRO)

    def __init__(self, dist, device: torch.device, group: process_group.Group | None = None):
        """``dist``: the config's ``dist`` section, the only one a strategy reads."""
        self.dist, self.device, self.group = dist, device, group
        self.world = group.world if group else cluster.World()
        self._flag = None  # any_rank's group and the all-reduce in flight
        # True (on the device) once this rank's own gradient was non-finite before it was reduced;
        # None where the strategy cannot see it (only the reduced gradient norm is checked then)
        self.own_grad_nonfinite: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ the step
    def shard(self, module: nn.Module) -> nn.Module:
        """Partition the module's parameters, before the optimizer is made (FSDP); others keep it whole."""
        return module

    def setup(self, module: nn.Module, optimizer, scheduler, scaler, wrap=lambda m: m) -> nn.Module:
        """Take ownership of the training objects; return the module to call in forward.
        ``wrap`` (e.g. torch.compile) is applied to what the strategy will run."""
        self.module, self.optimizer, self.scheduler, self.scaler = module, optimizer, scheduler, scaler
        return wrap(module)

    def no_sync(self, sync: bool):
        """Context for one micro-step; gradients are only synchronised when ``sync``."""
        return contextlib.nullcontext()

    def time_communication(self, timer) -> None:
        """Have gradient communication timed into ``timer.comm``, where it can be."""

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, clip: float | None) -> torch.Tensor:
        """Clip, update, advance the LR schedule. Returns the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        norm = self.clip_gradients(clip or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        return nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)

    # --------------------------------------------------------- collectives
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def any_rank(self, flag: bool) -> bool:
        """True on every rank, at the same call, once any rank has passed True -- one call after that
        rank did: each call's flag is all-reduced in the background and read at the next call, so a
        step never waits for the round trip (whose latency grows with the rank count). On a gloo group
        of its own: no GPU synchronisation, no queueing behind gradient traffic."""
        if self.world_size == 1:
            return flag
        if self._flag is None:  # made at the first call, which every rank makes at the same step
            timeout = datetime.timedelta(seconds=self.dist.timeout_s)
            self._flag = (dist.new_group(backend="gloo", timeout=timeout), None, None)
        group, work, previous = self._flag
        agreed = False
        if work is not None:
            work.wait()  # issued a step ago: done by now unless a rank is missing (then: the time-out)
            agreed = bool(previous.item())
        t = torch.tensor([int(flag)])
        self._flag = (group, dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group, async_op=True), t)
        return agreed

    def gather_object(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # -------------------------------------------------------------- state
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

    def sharded_state_dict(self) -> dict:
        """Model and optimizer state keyed by parameter name, as this rank holds it (whole tensors,
        or DTensor shards under FSDP): what a DCP checkpoint saves and reshards on load."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.module, self.optimizer)
        return {"model": model, "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}  # fmt: skip

    def load_sharded_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])  # fmt: skip
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    def parameter_fingerprint(self) -> str:
        """A hash of every parameter's bytes: equal on two ranks only if their models are identical."""
        digest = hashlib.sha256()
        for p in self.module.parameters():
            digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def close(self) -> None:
        if self.group:
            self.group.close()
        if dist.is_initialized():
            dist.destroy_process_group()


class DDP(Strategy):
    name = "ddp"

    def setup(self, module, optimizer, scheduler, scaler, wrap=lambda m: m):
        super().setup(module, optimizer, scheduler, scaler)
        d = self.dist
        self.ddp = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            bucket_cap_mb=d.bucket_mb,
            gradient_as_bucket_view=d.gradient_as_bucket_view,
            static_graph=d.static_graph,
        )  # rank 0's initial weights are broadcast here
        return wrap(self.ddp)

    def no_sync(self, sync: bool):
        return contextlib.nullcontext() if sync else self.ddp.no_sync()

    def time_communication(self, timer) -> None:
        from hpc_dl.telemetry.timing import timed_allreduce_hook

        self.own_grad_nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

        def own_bucket(buffer: torch.Tensor) -> None:  # one fused pass over the bucket, no sync
            self.own_grad_nonfinite |= ~torch.isfinite(buffer.sum())

        self.ddp.register_comm_hook(None, timed_allreduce_hook(timer, own_bucket))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(cfg) -> Strategy:
    world = cluster.detect()
    name = cfg.dist.strategy
    if name == "single":
        if world.world_size != 1:
            raise ConfigError(
                f"dist.strategy = 'single' runs one process, but {world.world_size} were started "
                f"(by {world.launcher}): use dist.strategy=ddp, fsdp or deepspeed"
            )
        return Strategy(cfg.dist, select_device(cfg.train.device, world.local_rank))
    if world.launcher == "single":  # a distributed strategy in one plain process: a world of one
        world.launcher, world.master_port = "local", _free_port()
    process_group.check(world)
    device = select_device(cfg.train.device, world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        preflight.capture_nccl_log()
    group = process_group.init(world, "nccl" if device.type == "cuda" else "gloo", cfg.dist.startup_timeout_s)
    if name == "ddp":
        return DDP(cfg.dist, device, group)
    if name == "fsdp":
        from hpc_dl.distributed.fsdp import FSDP

        return FSDP(cfg.dist, device, group, autocast_dtype(cfg.train.precision, device))
    from hpc_dl.distributed import zero  # imports deepspeed, which is slow and optional

    # DeepSpeed's own config repeats the batch, optimizer and precision settings: made here, from them
    engine = zero.deepspeed_config(cfg, world.world_size, autocast_dtype(cfg.train.precision, device))
    return zero.DeepSpeed(cfg.dist, device, group, engine)
