"""hpc_dl: distributed deep-learning training for Slurm clusters of H100 nodes.

``hpc_dl.train(...)`` and ``hpc_dl.load(run_dir)`` are the Python API (hpc_dl/api.py), imported on
first use so that ``hpc-dl --help`` stays fast."""

__version__ = "0.1.0"
__all__ = ["Run", "load", "train"]


def __getattr__(name: str):
    if name in __all__:
        from hpc_dl import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpc_dl' has no attribute {name!r}")
