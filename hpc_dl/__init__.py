"""hpc_dl: distributed deep-learning training for Slurm clusters of H100 nodes."""

__version__ = "0.1.0"
