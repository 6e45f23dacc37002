"""Files that are either complete or absent: a crash never leaves half a file.
And the run directory's lock: one process writes into a run directory at a time."""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

from hpc_dl.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(UserError):
    """No space (or quota) left while writing a file; the file's previous version is intact."""


class _Hashing:
    """A write-only file that hashes what passes through it (no second read for a checksum)."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def atomic_write(path: Path, write, before_rename=None) -> str:
    """Call ``write(file)`` on a temporary file, then rename it to ``path``; returns the SHA-256
    of what was written. ``before_rename(digest)`` runs once the bytes are durable, before they
    appear under ``path`` (a checksum file written first is never missing for a complete file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            hashing = _Hashing(f)
            write(hashing)
            f.flush()
            os.fsync(f.fileno())
        digest = hashing.sha256.hexdigest()
        if before_rename:
            before_rename(digest)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _disk_full(e, path.parent):
            raise DiskFullError(f"no space left on device while writing {path} ({_free(path.parent)})") from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return digest


def _disk_full(e: BaseException, folder: Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain, or (torch's zip writer turns it into 'unexpected pos')
    any write error on a file system with (almost) nothing left."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if isinstance(e, DiskFullError):
            return False  # already said
        if isinstance(e, RuntimeError | OSError):
            try:
                if shutil.disk_usage(folder).free < 1 << 20:
                    return True
            except OSError:
                pass
        e = e.__cause__ or e.__context__
    return False


def _free(folder: Path) -> str:
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return "free space unknown"
    mount = Path(os.path.realpath(folder))
    while not os.path.ismount(mount):
        mount = mount.parent
    return f"{_size(usage.free)} free of {_size(usage.total)} on {mount}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def write_json(path: Path, data) -> str:
    return atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def write_text(path: Path, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text.encode()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DirectoryLock:
    """An exclusive lock on a folder, held until ``release`` or the process ends.

    It is an OS lock (flock) on ``<folder>/.lock``: the kernel frees it when the holder dies,
    so a killed run never blocks its own resume. The file names the holder (host, PID) for
    the message a second process gets. flock works on local disks and NFS (Linux emulates it
    with POSIX locks there); Lustre needs its ``flock`` mount option, which HPC sites set."""

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(f"cannot lock the run directory {self.folder} ({e.strerror})") from None
            raise UserError(
                f"run directory {self.folder} is in use by {holder}; wait for that run to end, "
                "or choose another --run-dir / log.run_name"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"host {socket.gethostname()}, PID {os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor frees the flock
            self.fd = None
