#!/usr/bin/env bash
# One jaxdist.bench command line, this tree against commit $OLD, interleaved run by run (old, then new, each
# round), every run compiling afresh (no compilation cache, so compile_s is a compile). One JSON line per run:
# jaxdist.bench's, with the round and the code ("old-<commit>" or "new") first. docs/performance.md
# ("ConvMixer's depthwise conv") reads it.
#
#   OLD=<commit> PYTHON=.venv/bin/python experiments/bench_ab.sh ROUNDS JAXDIST_BENCH_FLAGS...
#   OLD=HEAD~1 experiments/bench_ab.sh 2 --config=configs/cifar_pipeline.py --config.mesh.stage=1 --steps=5
set -euo pipefail
rounds=${1:?usage: OLD=<commit> bench_ab.sh ROUNDS JAXDIST_BENCH_FLAGS...}
shift
OLD=${OLD:?set OLD to the commit to compare with}
PYTHON=${PYTHON:-python}
case $PYTHON in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
repo=$(cd "$(dirname "$0")/.." && pwd)
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
git -C "$repo" archive "$OLD" | tar -x -C "$old"

run() {  # round tree code
  (cd "$2" && PYTHONPATH="$2" JAX_ENABLE_COMPILATION_CACHE=false "$PYTHON" -m jaxdist.bench "${@:4}") |
    "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        print(json.dumps({"round": int(sys.argv[1]), "code": sys.argv[2], **json.loads(line)}), flush=True)' "$1" "$3"
}

for r in $(seq "$rounds"); do
  run "$r" "$old" "old-$OLD" "$@"
  run "$r" "$repo" new "$@"
done
