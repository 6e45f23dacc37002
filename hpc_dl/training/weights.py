"""Trained weights from disk: a run directory, a checkpoint, or a downloaded torchvision file.

Everything is loaded with ``weights_only=True`` (tensors and plain containers, no code),
and nothing is ever fetched from the internet: a missing file says where to put it.
"""

from pathlib import Path

import torch
from torch import nn

from hpc_dl import checkpoint, config, data, models
from hpc_dl.checkpoint import CheckpointDir, dcp
from hpc_dl.data.spec import Splits
from hpc_dl.errors import CheckpointError, UserError

CONSOLIDATED = "model_fp32.pt"  # what `hpc-dl consolidate` writes into a DeepSpeed run directory


def _torchvision_hint(path: Path) -> str:
    """Where torchvision's published weights for a file name like resnet18-f37072fd.pth come from."""
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        for weights in torchvision.models.get_model_weights(name):
            if weights.url.rsplit("/", 1)[-1] == path.name:
                return f" (torchvision's {weights}: download {weights.url} on a machine with internet, copy it here)"
    return ""


def resolve(where: str | Path) -> Path:
    """The weights file that ``where`` (run directory, checkpoints folder or file) stands for."""
    path = Path(where)
    if dcp.is_folder(path):  # one DCP checkpoint folder
        return path
    if path.is_dir():
        if (path / CONSOLIDATED).is_file():
            return path / CONSOLIDATED
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        latest = CheckpointDir(folder, 1).latest()
        if latest is None:
            raise UserError(f"{where}: no checkpoint in this folder (expected a run directory or a checkpoint file)")
        path = latest
    if dcp.is_folder(path):  # a sharded checkpoint: read whole tensors from it
        return path
    if path.is_dir():  # a DeepSpeed checkpoint: ZeRO shards, one folder per step
        raise UserError(
            f"{path} is a DeepSpeed checkpoint folder; write it as one file first: hpc-dl consolidate {path}"
        )
    if not path.is_file():
        raise UserError(
            f"weights file {where} not found; nothing is downloaded at run time: put the file there"
            f"{_torchvision_hint(path)}, or give an hpc_dl run directory"
        )
    return path


def read_state_dict(where: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """(model state dict, the file it came from) from an hpc_dl checkpoint or a plain state dict file."""
    path = resolve(where)
    if dcp.is_folder(path):
        return dcp.read_full(path, "model"), path
    if path.with_name(path.name + checkpoint.SUM).is_file():
        checkpoint.verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled code
        raise UserError(f"{path}: not a loadable weights file ({checkpoint.load_error(e)})") from e
    if isinstance(state, dict) and state.get("format") in checkpoint.FORMATS:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}, path


def load_run(run_dir: str | Path) -> tuple[config.Config, Splits, nn.Module, Path]:
    """The config, data splits, trained model (eval mode, CPU) of a finished run, and its weights file."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); give the folder `hpc-dl train` wrote")
    cfg = config.load(run / "config.yaml", [])
    splits = data.build(cfg.data)
    model = models.build(cfg.model, splits.spec)
    state, path = read_state_dict(run)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the model in {run / 'config.yaml'}: {e}") from e
    return cfg, splits, model.eval(), path
