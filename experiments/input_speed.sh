#!/bin/bash
# Images/s the input pipeline delivers (python -m jaxdist.bench --data_only) for configs/cifar_dp.py
# (batch 128, augment=crop_flip), rows a-d of docs/benchmarks.md "Input pipeline":
#   a: synthetic uint8 images in memory (augmentation only), 4 threads (the default)
#   b: a CIFAR-shaped PNG folder (decode + augmentation), 4 threads
#   c: the PNG folder, 1 thread
#   d: the PNG folder, WORKERS worker processes (default 2)
# With BASE=<another checkout> (e.g. `git worktree add .base <commit>`) each row runs there too, alternated
# with this checkout run by run, for an A/B of two versions of the pipeline on one machine.
# One JSON line per run, tagged with "side", "row" and "round", to OUT.
#
#   bash experiments/input_speed.sh [ROUNDS] [OUT.jsonl]                # ~1.5 min a round with BASE, 2-core VM
#   BASE=.base DEVICES=0 bash experiments/input_speed.sh 2 input.jsonl   # DEVICES=0: JAX's own devices (a GPU)
#   ROWS='a d' bash experiments/input_speed.sh 1 input.jsonl           # only those rows
set -u
ROUNDS=${1:-2}
OUT=${2:-input.jsonl}
PY=${PYTHON:-python}
PNGS=${PNGS:-/tmp/pngs}
WORKERS=${WORKERS:-2}
DEVICES=${DEVICES:-8}  # simulated CPU devices, as configs/cifar_dp.py sets; 0: JAX's default devices
HERE=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$PNGS" ] || "$PY" "$HERE/experiments/write_png_folder.py" "$PNGS" --per_class=1000 >&2
C=(--config=configs/cifar_dp.py --data_only "--config.cpu_devices=$DEVICES")
[ "$DEVICES" = 0 ] && C+=(--config.mesh.data=1)
FOLDER=(--config.data.name=folder "--config.data.path=$PNGS" --steps=100)
declare -A ROW=(
  [a]="--config.data.name=synthetic --config.data.synthetic_shape=(32,32,3) --steps=200"
  [b]="${FOLDER[*]}"
  [c]="${FOLDER[*]} --config.data.num_threads=1"
  [d]="${FOLDER[*]} --config.data.worker_count=$WORKERS"
)
: > "$OUT"
for round in $(seq "$ROUNDS"); do
  for row in ${ROWS:-a b c d}; do
    for side in new ${BASE:+base}; do
      dir=$HERE
      [ "$side" = base ] && dir=$(cd "$BASE" && pwd)
      echo "== $side row $row round $round" >&2
      # shellcheck disable=SC2086  # ROW holds one flag per word
      (cd "$dir" && "$PY" -m jaxdist.bench "${C[@]}" ${ROW[$row]} 2>/dev/null | grep '^{') |
        "$PY" -c "import json,sys; [print(json.dumps({'side': sys.argv[1], 'row': sys.argv[2], 'round': int(sys.argv[3]),
                   **json.loads(l)}), flush=True) for l in sys.stdin]" "$side" "$row" "$round" | tee -a "$OUT"
    done
  done
done
