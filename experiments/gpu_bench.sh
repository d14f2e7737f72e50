#!/bin/bash
# jaxdist on one GPU against the hand-written JAX loop and PyTorch (docs/benchmarks.md, "On one GPU").
# For the seeds' CNN and ResNet-20 (configs/cifar_dp.py) at global batch 128 (the config's) and 1024, and
# the LSTM (configs/seqmnist_lstm.py) at batch 128, alternated run by run, ROUNDS rounds:
#   - jaxdist default: python -m jaxdist.bench, the step jaxdist.main runs (NaN guard, gradient-norm metric,
#     schedule, the loop's in-flight limit), synthetic data, 1 device (mesh.data=1, cpu_devices=0);
#   - jaxdist bare: the same with --config.nan_policy=off --config.log_grad_norm=False (as overhead.sh);
#   - with WITHOUT="EXTRA ...", jaxdist without EXTRA: the default step with experiments/bench_without.py's
#     EXTRA changed (default_forms: the NaN guard and gradient norm in the forms the CPU compiles);
#   - hand-written JAX: experiments/peers/bench_jax.py, unchanged; it runs on JAX's default backend (its
#     --devices only sets the number of simulated CPU devices), so on a GPU machine on the GPU. Its mesh
#     comes from jax.make_mesh, whose axes are Explicit by default, and on jax 0.11 its step then fails to
#     trace (ShardingTypeError on a scatter in the loss's gradient); a wrapper makes that axis Auto, as
#     jaxdist's meshes are. On one device the step is the same: on jax 0.10.2, where both trace, the peer's
#     loss is bitwise equal with and without the wrapper;
#   - torch eager: experiments/peers/bench_torch.py and experiments/bench_lstm_torch.py are CPU scripts;
#     they run unchanged on the GPU through a wrapper that sets torch's default device to cuda and
#     synchronizes the GPU at every time.perf_counter() call, so every timed interval ends with its work done.
# On backends jax reaches through the PJRT C API (CUDA, TPU) a lowered step has no cost analysis;
# jaxdist/parallel/report.py then counts the model FLOPs on the host's CPU backend (`host_flops`), so the
# jaxdist runs report an MFU there. The jaxdist runs get GLIBC_TUNABLES=glibc.malloc.hugetlb=1 preset, the
# setting bench would restart itself with; the peers get the same (overhead.sh).
# One JSON line per run, tagged with "run" and "round", to OUT.jsonl; the first line describes the machine.
#
#   bash experiments/gpu_bench.sh [ROUNDS] [OUT.jsonl]         # ROUNDS=2: 4 min on one H100 without torch CIFAR runs
#   DEADLINE_S=420 bash experiments/gpu_bench.sh 2 gpu.jsonl   # start no run after 420 s
#   SKIP='^torch_eager (cnn|resnet20)' bash experiments/gpu_bench.sh   # leave out the runs whose name matches
#   WITHOUT=default_forms SKIP='torch|lstm|b1024' bash experiments/gpu_bench.sh 3   # against the CPU's forms
#
# Needs a GPU that JAX sees and torch (the torch runs are skipped without it); installs what it lacks of
# jaxdist's dependencies from wheels/ first (experiments/gpu_deps.sh).
# STEPS=100 (the default) puts one log point (log_every=100) in each timed loop of jaxdist.bench, as
# training has. docs/bench-gpu-2026-11-27b.jsonl came from
#   STEPS=100 JAX_COMPILATION_CACHE_DIR=/tmp/jc DEADLINE_S=418 SKIP='^torch_eager (cnn|resnet20)' \
#     bash experiments/gpu_bench.sh 2 gpu.jsonl
# (no run reached the deadline: 233 s in all). docs/bench-gpu-2026-11-27.jsonl is an earlier run (git log).
set -u
ROUNDS=${1:-2}
OUT=${2:-gpu.jsonl}
PY=${PYTHON:-python3}
STEPS=${STEPS:-100}
DEADLINE_S=${DEADLINE_S:-0}
P=experiments/peers
BARE=(--config.nan_policy=off --config.log_grad_norm=False)
ONE=(--config.cpu_devices=0 --config.mesh.data=1 "--steps=$STEPS" --repeats=3)
HUGE=glibc.malloc.hugetlb=1
# Runs a CPU-only torch script unchanged on the GPU (see the header).
TORCH_CUDA='import runpy, sys, time, torch
torch.set_default_device("cuda")
_perf_counter = time.perf_counter
def synced():
    torch.cuda.synchronize()
    return _perf_counter()
time.perf_counter = synced
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")'

# Runs bench_jax.py unchanged with an Auto mesh axis (see the header).
JAX_AUTO='import functools, runpy, sys, jax
jax.make_mesh = functools.partial(jax.make_mesh, axis_types=(jax.sharding.AxisType.Auto,))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")'

tag() { $PY -c "import json,sys; [print(json.dumps({'run': sys.argv[1], 'round': int(sys.argv[2]), **json.loads(l)}), flush=True) for l in sys.stdin if l.startswith('{')]" "$1" "$2"; }
late() { [ "$DEADLINE_S" -gt 0 ] && [ "$SECONDS" -ge "$DEADLINE_S" ]; }
go() {  # go NAME ROUND COMMAND...: one run, its JSON line tagged and appended to OUT, its log to stderr
  local name=$1 round=$2; shift 2
  if [[ -n ${SKIP:-} && $name =~ $SKIP ]]; then return; fi
  if late; then echo "== skipped (past DEADLINE_S=$DEADLINE_S): $name round $round" >&2; return; fi
  echo "== $name round $round, ${SECONDS}s: $*" >&2
  "$@" | tag "$name" "$round" | tee -a "$OUT"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "== $name round $round: exit $rc" >&2
}

PYTHON=$PY bash experiments/gpu_deps.sh || exit 1
if ! $PY -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "gpu_bench.sh: JAX sees no GPU ($($PY -c 'import jax; print(jax.devices())' 2>&1 | tail -1))" >&2
  exit 1
fi
HAVE_TORCH=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
: > "$OUT"
$PY - "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)" <<'EOF' | tee -a "$OUT"
import json, platform, sys
from importlib.metadata import version, PackageNotFoundError
import jax
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
print(json.dumps({"run": "machine", "gpu": sys.argv[1], "devices": [str(d) for d in jax.devices()],
                  "python": platform.python_version(), **{p: v(p) for p in (
                      "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
                      "orbax-checkpoint", "grain", "ml-collections", "numpy", "torch")}}))
EOF

for round in $(seq "$ROUNDS"); do
  for model in cnn resnet20; do
    peer=$([ $model = cnn ] && echo dcnn || echo resnet20)
    for batch in 128 1024; do
      J=(env "GLIBC_TUNABLES=$HUGE" "$PY" -m jaxdist.bench --config=configs/cifar_dp.py "--config.model.name=$model"
         "--config.batch_size=$batch" "${ONE[@]}")
      go "jaxdist_default $model b$batch" "$round" "${J[@]}"
      go "jaxdist_bare $model b$batch" "$round" "${J[@]}" "${BARE[@]}"
      for extra in ${WITHOUT:-}; do
        go "jaxdist_without_$extra $model b$batch" "$round" env "GLIBC_TUNABLES=$HUGE" PYTHONPATH=. \
          "$PY" experiments/bench_without.py "$extra" "${J[@]:5}"
      done
      go "handwritten $model b$batch" "$round" env GLIBC_TUNABLES=$HUGE \
        $PY -c "$JAX_AUTO" $P/bench_jax.py --model $peer --batch $batch --steps "$STEPS" --repeats 3
      [ "$HAVE_TORCH" = 1 ] && go "torch_eager $model b$batch" "$round" env GLIBC_TUNABLES=$HUGE \
        $PY -c "$TORCH_CUDA" $P/bench_torch.py --model $peer --batch $batch --steps "$STEPS" --repeats 3
    done
  done
  go "jaxdist_default lstm b128" "$round" env GLIBC_TUNABLES=$HUGE \
    $PY -m jaxdist.bench --config=configs/seqmnist_lstm.py "${ONE[@]}"
  go "handwritten lstm b128" "$round" env GLIBC_TUNABLES=$HUGE \
    $PY -c "$JAX_AUTO" $P/bench_jax.py --model lstm --batch 128 --steps "$STEPS" --repeats 3
  [ "$HAVE_TORCH" = 1 ] && go "torch_eager lstm b128" "$round" env GLIBC_TUNABLES=$HUGE \
    $PY -c "$TORCH_CUDA" experiments/bench_lstm_torch.py --steps "$STEPS" --warmup 3
done
echo "== done, ${SECONDS}s" >&2
