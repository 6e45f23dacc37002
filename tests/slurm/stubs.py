"""Stub Slurm commands on PATH and a stand-in venv, for running slurm/*.sh and train.sbatch as a one-node
job would, without a cluster."""

import sys
from pathlib import Path


def install(folder: Path, stubs: dict[str, str]) -> Path:
    """Write each stub as ``folder/bin/NAME`` and a venv at ``folder/venv`` whose python is this one
    (the template runs ``$VENV/bin/python -m hpc_dl.distributed.cluster``); returns the bin folder."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    venv_bin = folder / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text("")
    (venv_bin / "python").write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')  # a link would lose the venv
    (venv_bin / "python").chmod(0o755)
    return bin_dir
