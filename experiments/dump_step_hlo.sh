#!/bin/bash
# The compiled train step as XLA optimized it, on whatever backend JAX runs on, for jaxdist.bench's default
# step, the bare step (no NaN guard, no gradient-norm metric) and experiments/bench_without.py's variants:
# each run's after-optimizations HLO modules under OUT/<variant>/ (XLA's own dump; other files deleted).
# Prints, per variant, the train step's reduce, conditional, and fusion or custom-call ops (on a GPU, about
# the kernels it launches); count more from the files, e.g.
#   grep -c ' fusion(\| custom-call(' OUT/default/*jit_train_step*after_optimizations.txt
#
#   bash experiments/dump_step_hlo.sh OUT [MODEL] [VARIANT ...]   # MODEL: cnn | resnet20 (default), on 1 device
#   bash experiments/dump_step_hlo.sh /tmp/h cnn default bare cuda_forms
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: dump_step_hlo.sh OUT [MODEL] [VARIANT ...]}
MODEL=${2:-resnet20}
shift $(($# < 2 ? $# : 2))
PY=${PYTHON:-python3}
ARGS=(--config=configs/cifar_dp.py "--config.model.name=$MODEL" --config.cpu_devices=0 --config.mesh.data=1
      --steps=2 --warmup=1 --repeats=1)
# A cached compile dumps nothing: compile afresh.
export JAX_ENABLE_COMPILATION_CACHE=false
for variant in "${@:-default}"; do
  case $variant in
    default) command=(-m jaxdist.bench "${ARGS[@]}") ;;
    bare) command=(-m jaxdist.bench "${ARGS[@]}" --config.nan_policy=off --config.log_grad_norm=False) ;;
    *) command=(experiments/bench_without.py "$variant" "${ARGS[@]}") ;;
  esac
  rm -rf "${OUT:?}/$variant" && mkdir -p "$OUT"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=$OUT/$variant --xla_dump_hlo_as_text" PYTHONPATH=. \
    "$PY" "${command[@]}" > "$OUT/$variant.json"
  find "$OUT/$variant" -type f ! -name '*after_optimizations.txt' -delete
  find "$OUT/$variant" -mindepth 1 -type d -empty -delete
  echo "$variant: $(find "$OUT/$variant" -name '*.txt' | wc -l) modules in $OUT/$variant" >&2
  step=$(find "$OUT/$variant" -name '*jit_train_step*after_optimizations.txt' | head -1)
  count() { grep -c "$1" "$step" || true; }
  echo "$variant: train step: $(count ' reduce(') reduce, $(count ' conditional(') conditional," \
       "$(count ' fusion(\| custom-call(') fusion or custom-call ops" >&2
done
