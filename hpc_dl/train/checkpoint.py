"""Checkpoints on disk: atomic writes, a ``latest`` pointer, rotation, safe loading.

A checkpoint file appears under its final name only when complete: it is
written to a temporary file in the same folder, fsynced, and renamed (rename is
atomic on POSIX file systems, including Lustre and GPFS). The ``latest`` pointer
is replaced the same way after the rename, so a process killed at any moment
leaves the previous checkpoint and pointer intact.
"""

import os
import re
import shutil
import sys
from pathlib import Path

import torch

from hpc_dl.errors import CheckpointError
from hpc_dl.fileio import atomic_write

FORMAT = "hpc_dl-checkpoint-1"
LATEST = "latest"
_NAME = re.compile(r"^step_(\d+)(\.pt)?$")  # a file, or a folder (DeepSpeed writes one per tag)


def save(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path) -> dict:
    """Load with ``weights_only=True``; any fault becomes a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global, I/O error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be loaded ({reason[:200]})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an hpc_dl checkpoint (no '{FORMAT}' format marker)")
    return state


class CheckpointDir:
    """``step_00000100.pt`` files (or ``step_00000100/`` folders) plus a ``latest`` pointer."""

    def __init__(self, path: Path, keep_last: int):
        self.path, self.keep_last = Path(path), keep_last

    def files(self) -> list[Path]:
        """Checkpoint files, newest step first."""
        if not self.path.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.path.iterdir() if (m := _NAME.match(p.name)) and (p.is_dir() or m[2])]
        return [p for _, p in sorted(found, reverse=True)]

    def latest(self) -> Path | None:
        pointer = self.path / LATEST
        if pointer.is_file():
            target = self.path / pointer.read_text().strip()
            if target.exists():
                return target
        files = self.files()
        return files[0] if files else None

    def save(self, step: int, state: dict) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / f"step_{step:08d}.pt"
        save(path, state)
        self._publish(path)
        return path

    def publish_folder(self, tmp: Path, step: int) -> Path:
        """Move a completely written checkpoint folder to its final name, then point to it."""
        final = self.path / f"step_{step:08d}"
        if final.exists():  # the same step saved again after a resume: replace it
            old = final.with_name(f".{final.name}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        self._publish(final)
        return final

    def _publish(self, path: Path) -> None:
        atomic_write(self.path / LATEST, lambda f: f.write(f"{path.name}\n".encode()))
        for old in self.files()[self.keep_last :]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)

    def load_latest(self, loader=load) -> tuple[Path, dict] | None:
        """The newest loadable checkpoint (``loader(path)`` succeeds); corrupt ones are reported and skipped."""
        latest = self.latest()
        order = [latest] + [p for p in self.files() if p != latest] if latest else []
        errors = []
        for path in order:
            try:
                return path, loader(path)
            except CheckpointError as e:
                errors.append(str(e))
                print(f"warning: {e}; trying an older checkpoint", file=sys.stderr)
        if errors:
            raise CheckpointError(f"no loadable checkpoint in {self.path}: " + "; ".join(errors))
        return None
