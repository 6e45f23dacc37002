"""DeepSpeed ZeRO behind the Strategy interface.

Our config is mapped into a generated DeepSpeed config (batch sizes, gradient
accumulation, clipping, ZeRO stage, bf16/fp16, Adam/AdamW as DeepSpeed's
``optimizer`` section). SGD, which DeepSpeed's config does not offer, and the LR
schedule are passed as client objects, so every strategy follows the same
schedule. A user's JSON (``dist.deepspeed_config``) is merged on top and wins.

Checkpoints are DeepSpeed's own folders, one part per rank (``save_shards``); where they
are written, checked and renamed is ``hpc_dl.checkpoint``'s business.
"""

import json
import os
import warnings
from pathlib import Path

import torch

from hpc_dl.distributed.strategy import Strategy
from hpc_dl.errors import ConfigError

# DeepSpeed calls torch's old collective names, which warn on every rank of every run (torch 2.14).
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(cfg, world_size: int, dtype) -> dict:
    """The DeepSpeed config our settings imply, with the user's JSON merged over it."""
    o, t = cfg.optim, cfg.train
    generated = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip or 0.0,
        "zero_optimization": {"stage": cfg.dist.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 2**31 - 1,  # hpc_dl logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if o.name in ("adam", "adamw"):  # torch_adam: torch's kernels, no JIT build of DeepSpeed's own
        params = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay, "torch_adam": True}
        generated["optimizer"] = {"type": "AdamW" if o.name == "adamw" else "Adam", "params": params}
        if o.name == "adam":
            params["adam_w_mode"] = False
    if cfg.dist.deepspeed_config:
        path = Path(cfg.dist.deepspeed_config)
        try:
            user = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"dist.deepspeed_config = '{path}': cannot read it as JSON ({e})") from None
        generated = _merge(generated, user)
    return generated


class DeepSpeed(Strategy):
    name = "deepspeed"

    def __init__(self, dist, device: torch.device, group, engine_config: dict):
        """``engine_config``: DeepSpeed's JSON config (``deepspeed_config``)."""
        super().__init__(dist, device, group)
        self.config = engine_config

    def setup(self, module, optimizer, scheduler, scaler, wrap=lambda m: m):
        import deepspeed

        # The shared-memory comm op is a 30 s JIT build on first use; gloo does the job on CPUs.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.module, self.scaler = module, scaler
        # DeepSpeed reads the rank variables that torchrun sets; under plain srun (Slurm's variables) or in
        # one plain process nothing has set them: give it the world detected here.
        for name, value in (("RANK", self.world.rank), ("LOCAL_RANK", self.world.local_rank),
                            ("WORLD_SIZE", self.world.world_size)):  # fmt: skip
            os.environ.setdefault(name, str(value))
        in_config = "optimizer" in self.config
        schedule = scheduler.lr_lambdas[0]

        def client_scheduler(opt):
            return torch.optim.lr_scheduler.LambdaLR(opt, schedule)

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            model_parameters=optimizer.param_groups if in_config else None,  # keeps the no-decay groups
            optimizer=None if in_config else optimizer,
            lr_scheduler=None if "scheduler" in self.config else client_scheduler,
            config=self.config,
            dist_init_required=False,
        )  # fmt: skip
        return wrap(self.engine)

    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divides by grad_accum. DeepSpeed counts micro-steps in step()
        # and only updates at the accumulation boundary.
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self, clip: float | None) -> torch.Tensor:
        norm = self.engine.get_global_grad_norm()  # clipping happened inside (gradient_clipping)
        return torch.tensor(float("nan") if norm is None else float(norm))

    sharded = True  # checkpoints are folders with one part per rank (hpc_dl.checkpoint.deepspeed reads them)

    def state_dict(self) -> dict:
        raise NotImplementedError("DeepSpeed checkpoints are folders written by save_shards")

    def save_shards(self, folder: Path, tag: str, client_state: dict) -> None:
        """Every rank writes its part of the engine's state into ``folder/tag``."""
        self.engine.save_checkpoint(str(folder), tag=tag, client_state=client_state, save_latest=False)

    def load_shards(self, parent: str, tag: str):
        """(loaded, client_state) from ``parent/tag``, as DeepSpeed's engine returns them."""
        return self.engine.load_checkpoint(parent, tag=tag)

    def parameter_fingerprint(self) -> str:
        if self.dist.zero_stage == 3:  # parameters are partitioned: gather each to compare
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters())):
                return super().parameter_fingerprint()
        return super().parameter_fingerprint()
