#!/usr/bin/env bash
# GPU acceptance in one command (issue 19); the logic is in acceptance.py beside this.
#   bash benchmarks/gpu/run.sh --out DIR              # one H100/H200, at most 8 minutes
#   bash benchmarks/gpu/run.sh --out DIR --dry-run    # CPU, tiny sizes (what CI runs)
# The checkout is used as it is, through PYTHONPATH: nothing is installed, so it runs on a
# machine without network or the optional packages (W&B, SHAP, submitit, DeepSpeed).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu/acceptance.py "$@"
