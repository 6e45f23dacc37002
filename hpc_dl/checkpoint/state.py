"""A strategy's state into checkpoints and back. The strategy hands over state dicts (or, for
DeepSpeed, writes its parts where it is told); where they go, in which format, how they are made
atomic, checked and found again is decided here.

Three formats: one ``step_N.pt`` file written by rank 0 (single, DDP); a DCP folder ``step_N/``
(every strategy but DeepSpeed; FSDP's only one), which any world size can load; DeepSpeed's own
folder. Folders are written under a temporary name and renamed when complete, so a crash
never leaves a half-written ``step_N``. An asynchronous DCP save copies the state to host
memory, returns, and is published (manifest, rename, ``latest``, rotation) by rank 0 once every
rank has written; at most one is in flight.
"""

import shutil
import sys
import threading
from pathlib import Path

from hpc_dl.checkpoint import deepspeed as ds_files
from hpc_dl.checkpoint.files import CheckpointDir, load
from hpc_dl.errors import CheckpointError, first_line
from hpc_dl.fileio import DiskFullError, write_json


def format_for(strategy_name: str, fmt: str, asynchronous: bool) -> str:
    """``file``, ``dcp`` or ``deepspeed``: what a run with these settings writes."""
    if strategy_name == "deepspeed":
        return "deepspeed"
    if fmt == "auto":
        return "dcp" if strategy_name == "fsdp" or asynchronous else "file"
    return fmt


class Checkpointer:
    def __init__(self, strategy, ckpts: CheckpointDir, fmt: str = "auto", asynchronous: bool = False):
        self.strategy, self.ckpts = strategy, ckpts
        self.format = format_for(strategy.name, fmt, asynchronous)
        self.asynchronous = asynchronous
        self.pending = None  # (future, publisher thread or None, error holder) of a save in flight
        self.group = None
        if asynchronous and strategy.world_size > 1 and strategy.sharded:
            # the background writer's collectives get a group of their own: on the training group they
            # would interleave with the gradient all-reduces of the steps that run meanwhile
            import datetime

            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=strategy.dist.timeout_s))

    # ---------------------------------------------------------------- saving
    def save(self, step: int, extra: dict) -> None:
        """Every rank takes part. Synchronous saves return when the checkpoint is complete; rank 0
        raises DiskFullError when it could not write it (the previous one is kept)."""
        if self.format == "deepspeed":
            return self._save_deepspeed(step, extra)
        if self.format == "dcp":
            return self._save_dcp(step, extra)
        state = self.strategy.state_dict()
        failed = None
        if self.strategy.is_main:
            try:
                self.ckpts.save(step, {**state, **extra})
            except DiskFullError as e:  # raised after the barrier, so no rank waits for rank 0 in vain
                failed = e
        self.strategy.barrier()  # no rank runs ahead of a checkpoint it may have to resume from
        if failed:
            raise failed

    def _save_dcp(self, step: int, extra: dict) -> None:
        from hpc_dl.checkpoint import dcp

        self.wait()  # at most one save in flight
        s = self.strategy
        tmp = self.ckpts.path / f".step_{step:08d}.tmp"
        if s.is_main:  # made here: an asynchronous writer makes it only on its thread
            shutil.rmtree(tmp, ignore_errors=True)  # what a failed save of this step left
            tmp.mkdir(parents=True)
        s.barrier()
        tensors, rest = dcp.split({**s.sharded_state_dict(), **extra})
        whole = not s.sharded  # replicas: rank 0 writes them, alone, with no collective
        if not self.asynchronous:
            failed = None
            try:
                if s.is_main or not whole:
                    dcp.save(tmp, tensors, no_dist=whole)
                if s.is_main:
                    dcp.write_meta(tmp, rest)
            except OSError as e:
                failed = e
            failed = s.gather_object(str(failed) if failed else None)
            if any(failed):
                raise DiskFullError(f"checkpoint step {step} not written ({next(f for f in failed if f)})")
            if s.is_main:
                self._publish(tmp, step)
            s.barrier()
            return None
        if whole and not s.is_main:
            return None
        future = dcp.save(tmp, tensors, process_group=self.group, asynchronous=True, no_dist=whole)
        holder = {"error": None}
        publisher = None
        if s.is_main:  # DCP's coordinator finishes only after every rank has written: then publish
            dcp.write_meta(tmp, rest)
            publisher = threading.Thread(target=self._publish_when_done, args=(future, tmp, step, holder), daemon=True)
            publisher.start()
        self.pending = (future, publisher, holder)
        return None

    def _publish_when_done(self, future, tmp: Path, step: int, holder: dict) -> None:
        try:
            future.result()
            self._publish(tmp, step)
        except Exception as e:  # noqa: BLE001 - said by wait() on the main thread
            holder["error"] = f"{type(e).__name__}: {first_line(e)}"

    def _publish(self, tmp: Path, step: int) -> None:
        from hpc_dl.checkpoint import dcp

        dcp.write_manifest(tmp)
        self.ckpts.publish_folder(tmp, step)

    def wait(self) -> None:
        """Finish the save in flight (every rank calls it); a failed one is reported, not raised:
        the previous checkpoint is still the newest complete one."""
        if self.pending is None:
            return
        future, publisher, holder = self.pending
        self.pending = None
        try:
            future.result()
        except Exception as e:  # noqa: BLE001
            holder["error"] = holder["error"] or f"{type(e).__name__}: {first_line(e)}"
        if publisher is not None:
            publisher.join()
        if holder["error"]:
            print(f"warning: the background checkpoint save failed ({holder['error']}); "
                  f"the newest complete checkpoint is {self.ckpts.latest()}", file=sys.stderr)  # fmt: skip

    def _save_deepspeed(self, step: int, extra: dict) -> None:
        tmp = f".step_{step:08d}.tmp"
        self.ckpts.path.mkdir(parents=True, exist_ok=True)
        self.strategy.save_shards(self.ckpts.path, tmp, extra)
        self.strategy.barrier()  # every rank has written its part
        if self.strategy.is_main:
            final = self.ckpts.publish_folder(self.ckpts.path / tmp, step)
            write_json(final / "ds_config.json", self.strategy.config)
        self.strategy.barrier()


def load_into(strategy, path: Path, check=lambda state: None) -> dict:
    """Restore the strategy's state from ``path`` (any format this strategy reads); returns the whole
    checkpoint. ``check(state)`` may refuse it before the model or optimizer is touched."""
    path = Path(path)
    if strategy.name == "deepspeed":
        return _load_deepspeed(strategy, path, check)
    from hpc_dl.checkpoint import dcp

    if dcp.is_folder(path) or (path.is_dir() and (path / dcp.MANIFEST).is_file()):
        return _load_dcp(strategy, path, check)
    if path.is_dir():
        raise CheckpointError(f"{path} is a DeepSpeed checkpoint folder; resume it with dist.strategy=deepspeed")
    if strategy.sharded:
        raise CheckpointError(
            f"{path} is a one-file checkpoint; dist.strategy={strategy.name} resumes DCP folders "
            "(resume this one with single or ddp, with checkpoint.format=dcp to write one)"
        )
    state = load(path)
    check(state)
    try:
        strategy.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run's model/optimizer: {first_line(e)}") from e
    return state


def _load_dcp(strategy, path: Path, check) -> dict:
    from hpc_dl.checkpoint import dcp

    problem = None
    if strategy.is_main:  # one rank reads every byte; the others learn the verdict
        try:
            dcp.verify(path)
        except CheckpointError as e:
            problem = str(e)
    problem = strategy.gather_object(problem)[0]
    if problem:
        raise CheckpointError(problem)
    dcp.read_metadata(path)  # refused here, in one line, if it is not plain DCP metadata
    rest = dcp.read_meta(path)
    check(rest)
    tensors, _ = dcp.split(strategy.sharded_state_dict())  # this run's shards, to be filled
    try:
        dcp.load(path, tensors)
        strategy.load_sharded_state_dict(dcp.merge(tensors, rest))
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run's model/optimizer: {first_line(e)}") from e
    return rest


def _load_deepspeed(strategy, path: Path, check) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a DeepSpeed checkpoint folder (dist.strategy = 'deepspeed')")
    written_by = len(list(path.glob("*_optim_states.pt"))) or None
    if written_by and written_by != strategy.world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by DeepSpeed on {written_by} rank(s): each holds its own ZeRO "
            f"partition of the optimizer state, which DeepSpeed reloads only on {written_by} rank(s), not "
            f"{strategy.world_size} (hpc_dl does not convert to DeepSpeed's universal format). Resume on "
            f"{written_by} rank(s), or start a new run from its weights: hpc-dl consolidate {path}, then "
            "transfer.weights=<the file> transfer.head=keep"
        )
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
