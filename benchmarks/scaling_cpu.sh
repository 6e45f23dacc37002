#!/bin/bash
# The CPU scaling benchmark of this repository: weak and strong sweeps over 1 and 2
# processes on one machine, the collective bandwidth of 2 gloo ranks, and the projection
# overlaid on the measured weak sweep. Results (JSON, PNG, markdown) go to benchmarks/results/;
# the sweeps' run directories stay in a temporary folder.
#
#   bash benchmarks/scaling_cpu.sh            # about 10 minutes on a 2-core machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RESULTS=benchmarks/results
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MODEL=(data.name=synthetic_images data.on_device=true model.name=resnet20 train.steps=120 log.every=10
       train.eval_every=0 checkpoint.every=0 log.plots=false)
export WANDB_MODE=disabled

"$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m hpc_dl bench allreduce --max-bytes 64M \
    --out "$WORK/collectives"
for mode in weak strong; do
    "$PY" -m hpc_dl bench scaling "${MODEL[@]}" data.batch_size=64 --mode "$mode" --points 1x1,1x2 \
        --out "$WORK/scaling_cpu_$mode"
done
"$PY" -m hpc_dl bench project --measured "$WORK/scaling_cpu_weak/scaling.json" --nodes 1,2,4,8,16 \
    --intra "$WORK/collectives/collectives.json" --inter tcp --overlap measured --out "$WORK/projection"

cp "$WORK/collectives/collectives.json" "$RESULTS/collectives_cpu_2ranks.json"
cp "$WORK/collectives/collectives.png" "$RESULTS/collectives_cpu_2ranks.png"
for mode in weak strong; do
    for ext in json md png; do
        cp "$WORK/scaling_cpu_$mode/scaling.$ext" "$RESULTS/scaling_cpu_$mode.$ext"
    done
done
cp "$WORK/projection/projection.json" "$RESULTS/projection_cpu_weak.json"
cp "$WORK/projection/projection.png" "$RESULTS/projection_cpu_weak.png"
echo "wrote $RESULTS/{collectives_cpu_2ranks,scaling_cpu_weak,scaling_cpu_strong,projection_cpu_weak}.*"
