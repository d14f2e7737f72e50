#!/bin/bash
# The price of each extra on the default path (configs/cifar_dp.py as jaxdist.main runs it), by A/B: the
# default, then the default with one extra taken out, alternated run by run. The seeds' CNN, global batch
# 128 of 32x32x3, on DEVICES simulated CPU devices. One JSON line per run (tagged with the variant):
#   bash experiments/default_costs.sh [ROUNDS] [DEVICES] > default_costs.jsonl   (docs/benchmarks.md)
set -u
ROUNDS=${1:-2}
DEVICES=${2:-8}
B="--config=configs/cifar_dp.py --config.model.name=cnn --config.cpu_devices=$DEVICES --config.mesh.data=$DEVICES
   --steps=20 --repeats=3"
tag() { python -c "import json,sys; [print(json.dumps({'run': sys.argv[1], **json.loads(l)})) for l in sys.stdin if l.startswith('{')]" "$1"; }
declare -A FLAGS=(
  [default]=""
  [no_nan_guard]="--config.nan_policy=off"
  [no_grad_norm_metric]="--config.log_grad_norm=False"
  [bare]="--config.nan_policy=off --config.log_grad_norm=False"
  [constant_lr]="--config.schedule.name=constant"
  [warmup_cosine]="--config.schedule.name=cosine --config.schedule.warmup_steps=500"
  [no_weight_decay]="--config.optimizer.weight_decay=0"
  [log_every_step]="--config.log_every=1"
)
for _ in $(seq "$ROUNDS"); do
  for v in default no_nan_guard no_grad_norm_metric bare constant_lr warmup_cosine no_weight_decay log_every_step; do
    python -m jaxdist.bench $B ${FLAGS[$v]} 2>/dev/null | tag "$v ${DEVICES}dev"
  done
  for extra in accuracy inflight; do
    python experiments/bench_without.py $extra $B 2>/dev/null | tag "no_$extra ${DEVICES}dev"
  done
done
