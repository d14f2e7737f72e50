#!/bin/bash
# Synchronization modes on the offline digits recipe (configs/digits_dp.py: CNN, data=8, batch 128, 600
# steps, seed 0): final test accuracy of allreduce, local_sgd H=4 and stale tau=4, then the collective
# bytes per step of each mode's compiled steps (jaxdist.bench). docs/parallelism.md, "Synchronization modes".
#   bash experiments/sync_modes.sh OUT_DIR [EXTRA_FLAGS...]
set -u
OUT=$1; shift
mkdir -p "$OUT"  # each run's stderr goes to $OUT/NAME.log, opened before jaxdist.main creates its workdir
for run in "allreduce:" "local_sgd4:--config.sync.mode=local_sgd --config.sync.every=4" \
           "stale4:--config.sync.mode=stale --config.sync.staleness=4"; do
  name=${run%%:*}; flags=${run#*:}
  python -m jaxdist.main --config=configs/digits_dp.py --workdir="$OUT/$name" $flags "$@" 2>"$OUT/$name.log"
  echo "$name $(grep '"split": "eval"' "$OUT/$name/metrics.jsonl" | tail -1)"
done
for flags in "" "--config.sync.mode=local_sgd --config.sync.every=4" "--config.sync.mode=stale --config.sync.staleness=4" \
             "--config.sync.grad_dtype=bfloat16"; do
  python -m jaxdist.bench --config=configs/digits_dp.py --steps=8 --warmup=0 $flags "$@" 2>/dev/null | tail -1 |
    python -c "import json,sys; d=json.loads(sys.stdin.read()); print(json.dumps({k: d[k] for k in
      ('sync', 'collective_bytes_per_step', 'collective_bytes_by_variant', 'params_bytes_per_device')}))"
done
