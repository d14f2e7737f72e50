#!/bin/bash
# jaxdist.main end to end on one GPU (or TPU) machine without network: the commands a user runs, and the
# files they leave.
#   1. What the machine lacks of jaxdist's core dependencies is installed from wheels/
#      (experiments/gpu_deps.sh); the machine's own jax, flax, optax and orbax stay.
#   2. The README's quick start: configs/digits_dp.py to its end (real data: the digits scikit-learn ships).
#   3. configs/cifar_dp.py (ResNet-20, global batch 128) on synthetic images of CIFAR-10's shape (CIFAR-10
#      itself cannot reach such a machine) for STEPS steps with its evals and checkpoints, then the same
#      command with half as many steps more, which must resume from the last checkpoint.
#   4. experiments/run_summary.py's line for each run (platform, devices, compile s, images/s, MFU, the last
#      eval, attempts, goodput shares) to OUT/summary.jsonl and stdout; the workdirs stay under OUT.
#
#   bash experiments/gpu_main.sh [OUT]                 # OUT default runs/gpu_main
#   STEPS=20 DIGITS_STEPS=20 JAX_PLATFORMS=cpu bash experiments/gpu_main.sh /tmp/g   # a dry run on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_main}
PY=${PYTHON:-python3}
STEPS=${STEPS:-1000}
DIGITS_STEPS=${DIGITS_STEPS:-}  # empty: the config's own 600
bash experiments/gpu_deps.sh
rm -rf "$OUT" && mkdir -p "$OUT"
run() {  # NAME ARGS...: one jaxdist.main run, its log kept beside its workdir
  local name=$1
  shift
  echo "+ python -m jaxdist.main $* --workdir=$OUT/$name" >&2
  "$PY" -m jaxdist.main "$@" "--workdir=$OUT/$name" >> "$OUT/$name.log" 2>&1 || {
    echo "gpu_main: the $name run failed (exit $?); the end of $OUT/$name.log:" >&2
    tail -n 20 "$OUT/$name.log" >&2
    exit 1
  }
}
run digits --config=configs/digits_dp.py ${DIGITS_STEPS:+"--config.total_steps=$DIGITS_STEPS"}
CIFAR=(--config=configs/cifar_dp.py --config.data.name=synthetic "--config.data.synthetic_shape=(32,32,3)"
       "--config.eval_every=$((STEPS / 2))" "--config.checkpoint_every=$((STEPS / 2))")
run cifar_synthetic "${CIFAR[@]}" "--config.total_steps=$STEPS"
run cifar_synthetic "${CIFAR[@]}" "--config.total_steps=$((STEPS + STEPS / 2))"
grep -q "resumed from step $STEPS" "$OUT/cifar_synthetic.log" || { echo "gpu_main: the rerun did not resume from step $STEPS" >&2; exit 1; }
PYTHONPATH=. "$PY" experiments/run_summary.py "$OUT/digits" "$OUT/cifar_synthetic" | tee "$OUT/summary.jsonl"
