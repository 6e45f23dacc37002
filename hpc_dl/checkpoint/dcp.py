"""Checkpoint folders in PyTorch's distributed checkpoint format (DCP), read without running code.

A folder ``step_N/`` holds DCP's files (``__R_0.distcp`` per writing rank and ``.metadata``),
``meta.pt`` (everything that is not a tensor: step, data position, RNG states, config,
scheduler, optimizer hyper-parameters; written by rank 0 like a file checkpoint, weights-only)
and ``MANIFEST.sha256`` (every file's SHA-256, ``sha256sum -c`` format). DCP reshards at load
time: the tensors are read into whatever shards this run's ranks hold, so a folder written by
N ranks loads on M.

Only tensors go through DCP: DCP reads anything else with ``torch.load(weights_only=False)``,
and its ``.metadata`` with plain ``pickle``, both of which run code a crafted file carries.
Here ``.metadata`` is unpickled with an allow-list of DCP's own metadata classes and tensors
are read with ``weights_only=True``.
"""

import functools
import pickle
import warnings
from pathlib import Path

import torch

from hpc_dl.checkpoint import files
from hpc_dl.errors import CheckpointError, first_line
from hpc_dl.fileio import sha256_file, write_text

META = "meta.pt"
MANIFEST = "MANIFEST.sha256"
METADATA = ".metadata"  # DCP's index of what every file holds


def is_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / METADATA).is_file()


# ------------------------------------------------------------------ splitting
def split(tree: dict) -> tuple[dict, dict]:
    """(tensors, the rest) of a nested dict; lists and other values go to the rest whole."""
    tensors, rest = {}, {}
    for key, value in tree.items():
        if isinstance(value, dict):
            t, r = split(value)
            if t:
                tensors[key] = t
            if r or not t:
                rest[key] = r
        elif isinstance(value, torch.Tensor):
            tensors[key] = value
        else:
            rest[key] = value
    return tensors, rest


def merge(tensors: dict, rest: dict) -> dict:
    out = dict(rest)
    for key, value in tensors.items():
        out[key] = merge(value, out.get(key) or {}) if isinstance(value, dict) else value
    return out


# --------------------------------------------------------------------- saving
def save(folder: Path, tensors: dict, process_group=None, asynchronous: bool = False, no_dist: bool = False):
    """Write ``tensors`` into ``folder``: every rank calls it with its own shards, or (``no_dist``)
    one process alone. ``asynchronous``: stage to host memory now, write on a thread; returns a
    Future (``.result()`` when written)."""
    import torch.distributed.checkpoint as dcp  # 1.3 s to import: only when a run writes DCP

    where = {"checkpoint_id": str(folder), "process_group": process_group, "no_dist": no_dist}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # no_dist: meant
        if asynchronous:
            return dcp.async_save(tensors, **where)
        dcp.save(tensors, **where)
    return None


def write_meta(folder: Path, rest: dict) -> None:
    files.write(Path(folder) / META, rest)


def write_manifest(folder: Path) -> None:
    """Called by one rank once every rank's files are complete."""
    folder = Path(folder)
    sums = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST]
    write_text(folder / MANIFEST, "".join(sums))


def verify(folder: Path) -> None:
    """Every file the manifest names exists with its SHA-256; DCP's index and ``meta.pt`` are named."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {MANIFEST} is missing (an interrupted save?)")
    listed = dict(line.split("  ", 1)[::-1] for line in manifest.read_text().splitlines() if "  " in line)
    for needed in (METADATA, META):
        if needed not in listed:
            raise CheckpointError(f"checkpoint {folder} is incomplete: {MANIFEST} does not list {needed}")
    for name, digest in listed.items():
        path = folder / name
        if "/" in name or not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
        if sha256_file(path) != digest:
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated: its SHA-256 does not match {MANIFEST} "
                "(a flipped bit or a partial copy)"
            )


# -------------------------------------------------------------------- reading
_PLAIN = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by name, from a fixed table
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),  # the checkpoint id
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` holds dataclasses of its own, torch sizes, dtypes and enums; nothing else."""

    def find_class(self, module: str, name: str):
        if module == "torch.distributed.checkpoint.metadata":  # its dataclasses and enums, nothing callable else
            from torch.distributed.checkpoint import metadata

            allowed = isinstance(getattr(metadata, name, None), type) and getattr(metadata, name).__module__ == module
        else:
            allowed = (
                (module, name) in _PLAIN or module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
            )  # a dtype pickles as the global torch.<name>
        if not allowed:
            raise pickle.UnpicklingError(f"holds a Python object of type {module}.{name}, which is not DCP metadata")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("holds a persistent reference, which DCP metadata never does")


def read_metadata(folder: Path):
    """DCP's index of the folder, unpickled with the allow-list."""
    path = Path(folder) / METADATA
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except Exception as e:  # truncated, not a pickle, or code in it
        raise CheckpointError(f"checkpoint {path} is corrupt or not safe to load ({files.load_error(e)})") from e


@functools.cache
def _safe_classes():
    """DCP's reader and planner with the two unsafe reads replaced (made on first use: see save)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = read_metadata(self.path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class TensorsOnly(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            fqn = read_item.dest_index.fqn
            raise CheckpointError(f"the DCP checkpoint holds a pickled object at '{fqn}', which is refused")

    return SafeReader, TensorsOnly


def load(folder: Path, tensors: dict, process_group=None, no_dist: bool = False, flatten: bool = True) -> None:
    """Fill ``tensors`` (this rank's shards, or whole tensors) in place from ``folder``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    reader, planner = _safe_classes()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # no_dist: meant
            dcp.load(tensors, storage_reader=reader(str(folder)), planner=planner(flatten_state_dict=flatten),
                     process_group=process_group, no_dist=no_dist)  # fmt: skip
    except CheckpointException as e:  # one failure per rank, each (exception, traceback)
        cause = next((f[0] if isinstance(f, tuple) else f for f in e.failures.values()), e)
        raise CheckpointError(f"checkpoint {folder} cannot be loaded: {first_line(cause)}") from None


def read_meta(folder: Path) -> dict:
    return files.load(Path(folder) / META)


def read_full(folder: Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    """The whole (unsharded) tensors under ``prefix`` in one process, e.g. a model's state dict."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder)
    verify(folder)
    metadata = read_metadata(folder)
    items = {k: meta for k, meta in metadata.state_dict_metadata.items() if k.startswith(prefix + ".")}
    for key, meta in items.items():
        if not isinstance(meta, TensorStorageMetadata):
            raise CheckpointError(f"checkpoint {folder} cannot be loaded: it holds a pickled object at '{key}'")
    wanted = {key: torch.empty(meta.size, dtype=meta.properties.dtype) for key, meta in items.items()}
    if not wanted:
        raise CheckpointError(f"checkpoint {folder} holds no '{prefix}' tensors")
    load(folder, wanted, no_dist=True, flatten=False)
    return {key[len(prefix) + 1 :]: value for key, value in wanted.items()}
