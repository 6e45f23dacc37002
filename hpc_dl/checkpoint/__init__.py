"""Checkpoints: the files (one per step, SHA-256 beside it, a ``latest`` pointer) and the
checkpointer that moves a strategy's state dicts into and out of them."""

from hpc_dl.checkpoint.files import FORMAT, FORMATS, SUM, CheckpointDir, load, load_error, verify, write
from hpc_dl.checkpoint.state import load_into, save

__all__ = ["FORMAT", "FORMATS", "SUM", "CheckpointDir", "load", "load_error", "load_into", "save", "verify", "write"]
