"""Checkpoints: the files (one per step, SHA-256 beside it, a ``latest`` pointer), DCP folders
that any world size can load, and the checkpointer that moves a strategy's state into and out of them."""

from hpc_dl.checkpoint.files import FORMAT, FORMATS, SUM, CheckpointDir, load, load_error, verify, write
from hpc_dl.checkpoint.state import Checkpointer, load_into

__all__ = ["FORMAT", "FORMATS", "SUM", "CheckpointDir", "Checkpointer", "load", "load_error", "load_into", "verify",
           "write"]  # fmt: skip
