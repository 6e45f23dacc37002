#!/bin/bash
# A scaling sweep: one slurm/train.sbatch job per node count, all in one W&B group.
#
#   slurm/scaling.sh weak   "1 2 4 8"  configs/X.yaml [key=value ...]   # fixed batch per device
#   slurm/scaling.sh strong "1 2 4 8"  configs/X.yaml [key=value ...]   # fixed global batch
#
# Strong scaling divides GLOBAL_BATCH (default: the config's data.batch_size times the
# devices of the smallest point) by the devices of each point. sbatch options for every
# job go in SBATCH_ARGS, e.g. SBATCH_ARGS="--account=proj --time=00:30:00".
# Environment: GPUS_PER_NODE (default 4; 0 on a CPU partition, one process per node),
# SWEEP (the group name, default <mode>-<date>), BATCH (the config's per-device batch,
# needed for strong scaling when GLOBAL_BATCH is not given).
set -euo pipefail

if [ $# -lt 3 ] || { [ "$1" != weak ] && [ "$1" != strong ]; }; then
    echo "usage: slurm/scaling.sh weak|strong \"NODES...\" CONFIG.yaml [key=value ...]" >&2
    exit 2
fi
MODE=$1
read -r -a POINTS <<< "$2"
shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GPUS_PER_NODE=${GPUS_PER_NODE:-4}

# Numbers reach $(( )) here or in train.sbatch, where bash evaluates a value such as
# 'x[$(cmd)]' (and runs cmd): check them all before any arithmetic.
integer() {  # NAME VALUE MIN
    [[ $2 =~ ^(0|[1-9][0-9]{0,17})$ ]] && [ "$2" -ge "$3" ] && return
    echo "scaling.sh: $1 must be an integer >= $3, got '$2'" >&2
    exit 2
}
[ ${#POINTS[@]} -gt 0 ] || integer NODES "" 1
for NODES in "${POINTS[@]}"; do integer NODES "$NODES" 1; done
integer GPUS_PER_NODE "$GPUS_PER_NODE" 0
for NAME in NPROC_PER_NODE BATCH GLOBAL_BATCH; do
    [ -z "${!NAME:-}" ] || integer "$NAME" "${!NAME}" 1
done
PER_NODE=$(( GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1 ))
SWEEP=${SWEEP:-$MODE-$(date +%Y%m%d-%H%M%S)}
read -r -a EXTRA <<< "${SBATCH_ARGS:-}"

if [ "$MODE" = strong ] && [ -z "${GLOBAL_BATCH:-}" ]; then
    : "${BATCH:?strong scaling needs GLOBAL_BATCH, or BATCH (the per-device batch at the smallest point)}"
    GLOBAL_BATCH=$(( BATCH * POINTS[0] * PER_NODE ))
fi

echo "# sweep $SWEEP ($MODE): nodes job_id"
for NODES in "${POINTS[@]}"; do
    ARGS=("$@" "log.wandb_group=$SWEEP" "log.wandb_job_type=scaling" "log.run_name=$SWEEP-n$NODES")
    if [ "$MODE" = strong ]; then
        DEVICES=$(( NODES * PER_NODE ))
        if (( GLOBAL_BATCH % DEVICES )); then
            echo "global batch $GLOBAL_BATCH does not split evenly over $DEVICES devices ($NODES nodes)" >&2
            exit 2
        fi
        ARGS+=("data.batch_size=$(( GLOBAL_BATCH / DEVICES ))")
    fi
    JOB=$(sbatch --parsable --nodes="$NODES" --gpus-per-node="$GPUS_PER_NODE" --job-name="$SWEEP-n$NODES" \
          ${EXTRA[@]+"${EXTRA[@]}"} "$HERE/train.sbatch" "${ARGS[@]}")
    echo "$NODES ${JOB%%;*}"
done
