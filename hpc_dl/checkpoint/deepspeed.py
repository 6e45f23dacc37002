"""DeepSpeed's checkpoint folders: every file opened with weights_only=True before DeepSpeed
unpickles it, and DeepSpeed only ever given the checked folder through a link with a plain name
(``checked``); ``consolidate`` writes one fp32 file from a (ZeRO-partitioned) folder."""

import contextlib
import tempfile
from pathlib import Path

import torch

from hpc_dl.checkpoint.files import load_error
from hpc_dl.errors import CheckpointError
from hpc_dl.fileio import atomic_write


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
                reason = load_error(e)
                name = (shown or folder) / file.name
                raise CheckpointError(f"checkpoint {name} is corrupt, truncated or not safe to load ({reason})") from e


@contextlib.contextmanager
def checked(folder: Path):
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


def reason(e: Exception, parent: str, tag: str, folder: Path) -> str:
    """The first line of DeepSpeed's message, naming the user's folder rather than the link."""
    text = str(e).strip().replace(str(Path(parent) / tag), str(folder))
    return text.splitlines()[0][:300] if text else type(e).__name__


def consolidate(folder: Path, out: Path) -> Path:
    """Write the full fp32 state dict of a (possibly ZeRO-partitioned) checkpoint as one file."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(folder)
    with checked(folder) as (parent, tag):
        try:
            state = get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag)
        except (FileNotFoundError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            # a folder of other files, or of files that are not DeepSpeed's
            raise CheckpointError(
                f"{folder}: not a whole DeepSpeed ZeRO checkpoint ({reason(e, parent, tag, folder)})"
            ) from e
    atomic_write(out, lambda f: torch.save({k: v.contiguous() for k, v in state.items()}, f))
    return out
