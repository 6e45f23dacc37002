"""Checkpoints on disk: atomic writes, a ``latest`` pointer, rotation, safe loading.

A checkpoint file appears under its final name only when complete: it is
written to a temporary file in the same folder, fsynced, and renamed (rename is
atomic on POSIX file systems, including Lustre and GPFS). The ``latest`` pointer
is replaced the same way after the rename, so a process killed at any moment
leaves the previous checkpoint and pointer intact.

Every checkpoint file has a SHA-256 beside it (``step_N.pt.sha256``, ``sha256sum -c``
format), written before the file appears under its name and checked on load: a flipped
bit or a partial copy is treated like a corrupt file. The ``latest`` pointer names a
checkpoint in its own folder and nothing else.
"""

import os
import re
import shutil
import sys
from pathlib import Path

import torch

from hpc_dl.errors import CheckpointError
from hpc_dl.fileio import atomic_write, sha256_file, write_text

FORMAT = "hpc_dl-checkpoint-2"  # 2: has a checksum file
FORMATS = ("hpc_dl-checkpoint-1", FORMAT)  # 1 (no checksum) still loads
LATEST = "latest"
SUM = ".sha256"
_NAME = re.compile(r"^step_(\d+)(\.pt)?$")  # a file, or a folder (DeepSpeed writes one per tag)


def write(path: Path, state: dict) -> None:
    path = Path(path)
    checksum = path.with_name(path.name + SUM)
    atomic_write(
        path,
        lambda f: torch.save({"format": FORMAT, **state}, f),
        before_rename=lambda digest: write_text(checksum, f"{digest}  {path.name}\n"),
    )


def load_error(e: BaseException) -> str:
    """The first line of a loading error, without PyTorch's advice to retry with
    ``weights_only=False`` (which would run whatever code the file carries)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and "trust the source" not in line]
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if unsafe:
        return f"it holds a Python object of type {unsafe[1]}, which a weights-only load refuses"
    return (lines[0] if lines else type(e).__name__)[:200]


def verify(path: Path) -> None:
    """Compare a checkpoint file with its ``.sha256``; raise CheckpointError when they differ."""
    checksum = path.with_name(path.name + SUM)
    if not checksum.is_file():
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated: its checksum file {checksum.name} is missing"
        )
    expected = checksum.read_text().split()[0] if checksum.read_text().split() else ""
    if sha256_file(path) != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated: its SHA-256 does not match {checksum.name} "
            "(a flipped bit or a partial copy)"
        )


def load(path: Path) -> dict:
    """Load with ``weights_only=True`` after checking the file's checksum; any fault becomes a
    CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    checked = path.with_name(path.name + SUM).is_file()
    if checked:
        verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global, I/O error
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({load_error(e)})"
        ) from e
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        raise CheckpointError(f"{path} is not an hpc_dl checkpoint (no '{FORMAT}' format marker)")
    if state["format"] == FORMAT and not checked:
        verify(path)  # written with a checksum that is now missing
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
        """The checkpoint ``latest`` names, when it names one of this folder's checkpoints;
        a pointer to anything else (``../x``, ``/etc/passwd``) is ignored."""
        pointer = self.path / LATEST
        if pointer.is_file() and not pointer.is_symlink():
            name = pointer.read_text(errors="replace").strip()
            target = self.path / name
            if _NAME.match(name) and target in self.files():
                return target
            print(f"warning: {pointer} names '{name[:80]}', not a checkpoint in that folder; ignored", file=sys.stderr)
        files = self.files()
        return files[0] if files else None

    def clean_partial(self) -> list[Path]:
        """Remove what an interrupted save left (temporary files and folders, orphaned checksums).
        Call it only while holding the run directory's lock: then nobody is writing here."""
        if not self.path.is_dir():
            return []
        removed = []
        for p in self.path.iterdir():
            orphan = p.name.endswith(SUM) and not p.with_name(p.name[: -len(SUM)]).exists()
            if ".tmp" in p.name and p.name.startswith(".") or p.name.endswith(".old") or orphan:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def save(self, step: int, state: dict) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / f"step_{step:08d}.pt"
        write(path, state)
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
            old.with_name(old.name + SUM).unlink(missing_ok=True)

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
