"""DeepSpeed ZeRO behind the Strategy interface.

Our config is mapped into a generated DeepSpeed config (batch sizes, gradient
accumulation, clipping, ZeRO stage, bf16/fp16, Adam/AdamW as DeepSpeed's
``optimizer`` section). SGD, which DeepSpeed's config does not offer, and the LR
schedule are passed as client objects, so every strategy follows the same
schedule. A user's JSON (``dist.deepspeed_config``) is merged on top and wins.

Checkpoints are DeepSpeed's own folders, written under a temporary tag and
renamed when every rank has finished, so a crash never leaves a half-written
``step_N/``. DeepSpeed reads them with ``weights_only=False``; before it does,
every file is opened with ``weights_only=True`` (plus DeepSpeed's own config
types), so no checkpoint that carries arbitrary code is ever unpickled. DeepSpeed
globs the path it is given (``a[b]`` matches ``ab/``), so it only ever sees the
checked folder through a link with a plain name (``_checked``).
"""

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from hpc_dl.dist.strategy import Strategy
from hpc_dl.errors import CheckpointError, ConfigError
from hpc_dl.fileio import atomic_write, write_json
from hpc_dl.train import checkpoint
from hpc_dl.train.precision import autocast_dtype

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
        self.config = deepspeed_config(self.cfg, self.world_size, autocast_dtype(self.cfg.train.precision, self.device))
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

    def state_dict(self) -> dict:
        raise NotImplementedError("DeepSpeed checkpoints are folders written by save_checkpoint")

    def save_checkpoint(self, ckpts: checkpoint.CheckpointDir, step: int, extra: dict) -> None:
        tmp = f".step_{step:08d}.tmp"
        ckpts.path.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(ckpts.path), tag=tmp, client_state=extra, save_latest=False)
        self.barrier()  # every rank has written its shard
        if self.is_main:
            final = ckpts.publish_folder(ckpts.path / tmp, step)
            write_json(final / "ds_config.json", self.config)
        self.barrier()

    def load_checkpoint(self, path: Path, check=lambda state: None) -> dict:
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a DeepSpeed checkpoint folder (dist.strategy = 'deepspeed')")
        with _checked(path) as (parent, tag):
            try:
                loaded, client_state = self.engine.load_checkpoint(parent, tag=tag)
            except (RuntimeError, KeyError, ValueError, AssertionError) as e:
                first = _reason(e, parent, tag, path)
                raise CheckpointError(f"checkpoint {path} does not fit this run's model/optimizer: {first}") from e
        if loaded is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint in {path}")
        check(client_state)  # the client state comes with the engine's; checked after DeepSpeed read both
        return client_state

    def parameter_fingerprint(self) -> str:
        if self.cfg.dist.zero_stage == 3:  # parameters are partitioned: gather each to compare
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters())):
                return super().parameter_fingerprint()
        return super().parameter_fingerprint()


def _deepspeed_globals() -> list:
    """Non-tensor types DeepSpeed pickles into its checkpoints (its config enums)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def check_loadable(folder: Path, shown: Path | None = None) -> None:
    """Open every file of a DeepSpeed checkpoint with weights_only=True before DeepSpeed unpickles it;
    errors name the file as ``shown / name``."""
    with torch.serialization.safe_globals(_deepspeed_globals()):
        for file in sorted(folder.glob("*.pt")):
            try:
                torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:
                reason = checkpoint.load_error(e)
                name = (shown or folder) / file.name
                raise CheckpointError(f"checkpoint {name} is corrupt, truncated or not safe to load ({reason})") from e


@contextlib.contextmanager
def _checked(folder: Path):
    """(parent, tag) naming ``folder`` for DeepSpeed, with every file in it checked.

    DeepSpeed joins parent and tag and globs the result, so ``ckpt/a[b]`` would make it open
    ``ckpt/ab/*.pt``, files nobody checked, with weights_only=False. It gets a link with a plain
    name in a fresh temporary folder instead, and the check opens the files through that link."""
    with tempfile.TemporaryDirectory(prefix="hpc_dl_ds_") as tmp:
        if any(c in tmp for c in "*?["):
            raise CheckpointError(f"the temporary folder {tmp} has glob characters (*?[); set TMPDIR to a plain path")
        link = Path(tmp) / "checkpoint"
        link.symlink_to(Path(folder).resolve(), target_is_directory=True)
        check_loadable(link, shown=folder)
        yield tmp, link.name


def _reason(e: Exception, parent: str, tag: str, folder: Path) -> str:
    """The first line of DeepSpeed's message, naming the user's folder rather than the link."""
    text = str(e).strip().replace(str(Path(parent) / tag), str(folder))
    return text.splitlines()[0][:300] if text else type(e).__name__


def consolidate(folder: Path, out: Path) -> Path:
    """Write the full fp32 state dict of a (possibly ZeRO-partitioned) checkpoint as one file."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(folder)
    with _checked(folder) as (parent, tag):
        try:
            state = get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag)
        except (FileNotFoundError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            # a folder of other files, or of files that are not DeepSpeed's
            raise CheckpointError(
                f"{folder}: not a whole DeepSpeed ZeRO checkpoint ({_reason(e, parent, tag, folder)})"
            ) from e
    atomic_write(out, lambda f: torch.save({k: v.contiguous() for k, v in state.items()}, f))
    return out
