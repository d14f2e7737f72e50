#!/bin/bash
# Framework overhead on the default path: jaxdist as `jaxdist.main` runs configs/cifar_dp.py (NaN guard,
# gradient-norm metric, masked weight decay, step schedule, the loop's in-flight limit and log points),
# the same with the extras off ("bare"), and the hand-written JAX loop (experiments/peers/bench_jax.py),
# alternated run by run, for the seeds' CNN and ResNet-20, global batch 128 of 32x32x3, on 1 and on 8
# simulated CPU devices. The hand-written loop runs with the malloc setting jaxdist's entry points give
# themselves by default (glibc.malloc.hugetlb=1, jaxdist/host_memory.py), so the comparison is of the loops,
# not of the allocators. One JSON line per run, then the Markdown table (experiments/overhead_table.py):
#   bash experiments/overhead.sh [ROUNDS] [OUT.jsonl] [DEVICES]   (docs/benchmarks.md, "Framework overhead")
# DEVICES: the device counts to run, default "8 1"; e.g. "8" for the 8-device rows alone.
set -u
ROUNDS=${1:-2}
OUT=${2:-overhead.jsonl}
DEVICES=${3:-8 1}
P=experiments/peers  # the peer reference scripts (experiments/peers/README.md)
BARE="--config.nan_policy=off --config.log_grad_norm=False"
tag() { python -c "import json,sys; [print(json.dumps({'run': sys.argv[1], **json.loads(l)})) for l in sys.stdin if l.startswith('{')]" "$1"; }
: > "$OUT"
for _ in $(seq "$ROUNDS"); do
  for model in cnn resnet20; do
    peer=$([ $model = cnn ] && echo dcnn || echo resnet20)
    for devices in $DEVICES; do
      J="env -u GLIBC_TUNABLES python -m jaxdist.bench --config=configs/cifar_dp.py --config.model.name=$model --config.cpu_devices=$devices
         --config.mesh.data=$devices --steps=20 --repeats=3"
      $J 2>/dev/null | tag "jaxdist_default ${model} ${devices}dev" | tee -a "$OUT"
      $J $BARE 2>/dev/null | tag "jaxdist_bare ${model} ${devices}dev" | tee -a "$OUT"
      GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python "$P/bench_jax.py" --model $peer --devices $devices --steps 20 --repeats 3 2>/dev/null \
        | tag "handwritten ${model} ${devices}dev" | tee -a "$OUT"
    done
  done
done
python experiments/overhead_table.py "$OUT"
