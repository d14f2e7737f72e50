#!/usr/bin/env bash
# How long a run takes to start: the init and compile seconds of goodput.json for a short digits run of each
# model, this tree against commit $OLD, interleaved run by run, on one compilation cache. In round 1 the old
# tree's run compiles and the new one finds its programs cached where they are the same, so compare rounds 2
# on: every program cached, they time what a start costs besides compiling (imports, tracing, lowering, the
# init program's run). One JSON line per run. docs/performance.md ("Start-up") reads it.
#
#   OLD=88b3b9a PYTHON=.venv/bin/python experiments/startup_speed.sh [rounds, default 3] [models]
#
# models: default "resnet56 resnet50".
set -euo pipefail
rounds=${1:-3}
models=${2:-resnet56 resnet50}
OLD=${OLD:?set OLD to the commit to compare with}
PYTHON=${PYTHON:-python}
case $PYTHON in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/old"
git -C "$repo" archive "$OLD" | tar -x -C "$scratch/old"

run() {  # round tree code model
  rm -rf "$scratch/run"
  (cd "$2" && PYTHONPATH="$2" JAX_COMPILATION_CACHE_DIR="$scratch/cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
    "$PYTHON" -m jaxdist.main --config=configs/digits_dp.py --config.model.name="$4" --config.total_steps=2 \
    --config.log_every=1 --config.eval_every=2 --config.checkpoint_every=2 --workdir="$scratch/run" > /dev/null 2>&1)
  "$PYTHON" -c 'import json, sys
total = json.load(open(sys.argv[1]))["total"]
seconds = total["seconds"]
print(json.dumps({"round": int(sys.argv[2]), "code": sys.argv[3], "model": sys.argv[4],
                  "wall_s": round(total["wall_s"], 2), "init_s": round(seconds["init"], 2),
                  "compile_s": round(seconds["compile"], 2)}))' \
    "$scratch/run/goodput.json" "$1" "$3" "$4"
}

for r in $(seq "$rounds"); do
  for model in $models; do
    run "$r" "$scratch/old" "old-$OLD" "$model"
    run "$r" "$repo" new "$model"
  done
done
