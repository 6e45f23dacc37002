"""A strategy's state into checkpoint files and back. The strategy hands over state dicts (or, for
DeepSpeed, writes its parts where it is told); where they go, how they are made atomic, checked
and found again is decided here."""

from pathlib import Path

from hpc_dl.checkpoint import deepspeed as ds_files
from hpc_dl.checkpoint.files import CheckpointDir, load
from hpc_dl.errors import CheckpointError, first_line
from hpc_dl.fileio import DiskFullError, write_json


def save(strategy, ckpts: CheckpointDir, step: int, extra: dict) -> None:
    """Every rank takes part and returns when the checkpoint is complete; rank 0 raises
    DiskFullError when it could not write it (the previous one is kept)."""
    if strategy.sharded:
        return _save_folder(strategy, ckpts, step, extra)
    state = strategy.state_dict()  # every rank takes part (needed by sharded strategies)
    failed = None
    if strategy.is_main:
        try:
            ckpts.save(step, {**state, **extra})
        except DiskFullError as e:  # raised after the barrier, so no rank waits for rank 0 in vain
            failed = e
    strategy.barrier()  # no rank runs ahead of a checkpoint it may have to resume from
    if failed:
        raise failed


def _save_folder(strategy, ckpts: CheckpointDir, step: int, extra: dict) -> None:
    """A folder of parts written under a temporary tag, renamed when every rank has finished,
    so that a crash never leaves a half-written ``step_N/``."""
    tmp = f".step_{step:08d}.tmp"
    ckpts.path.mkdir(parents=True, exist_ok=True)
    strategy.save_shards(ckpts.path, tmp, extra)
    strategy.barrier()  # every rank has written its part
    if strategy.is_main:
        final = ckpts.publish_folder(ckpts.path / tmp, step)
        write_json(final / "ds_config.json", strategy.config)
    strategy.barrier()


def load_into(strategy, path: Path, check=lambda state: None) -> dict:
    """Restore the strategy's model and optimizer state from ``path``; returns the whole
    checkpoint. ``check(state)`` may refuse it before anything is loaded."""
    path = Path(path)
    if strategy.sharded:
        return _load_folder(strategy, path, check)
    if path.is_dir():
        raise CheckpointError(f"{path} is a DeepSpeed checkpoint folder; resume it with dist.strategy=deepspeed")
    state = load(path)
    check(state)
    try:
        strategy.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run's model/optimizer: {first_line(e)}") from e
    return state


def _load_folder(strategy, path: Path, check) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a DeepSpeed checkpoint folder (dist.strategy = 'deepspeed')")
    with ds_files.checked(path) as (parent, tag):
        try:
            loaded, client_state = strategy.load_shards(parent, tag)
        except (RuntimeError, KeyError, ValueError, AssertionError) as e:
            first = ds_files.reason(e, parent, tag, path)
            raise CheckpointError(f"checkpoint {path} does not fit this run's model/optimizer: {first}") from e
    if loaded is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint in {path}")
    check(client_state)  # the client state comes with the engine's; checked after DeepSpeed read both
    return client_state
