#!/usr/bin/env bash
# One jaxdist.bench command line with XLA's default flags against the same with FLAGS, interleaved run by run
# (default, then FLAGS, each round), every run compiling afresh. One JSON line per run: jaxdist.bench's, with
# the round first (its xla_flags field says which run it was). docs/performance.md ("XLA:CPU's convolutions")
# reads it.
#
#   PYTHON=.venv/bin/python experiments/xla_flags_ab.sh ROUNDS FLAGS JAXDIST_BENCH_FLAGS...
#   experiments/xla_flags_ab.sh 2 --xla_cpu_experimental_ynn_fusion_type=individual_dot --config=configs/cifar_dp.py
set -euo pipefail
rounds=${1:?usage: xla_flags_ab.sh ROUNDS FLAGS JAXDIST_BENCH_FLAGS...}
flags=${2:?usage: xla_flags_ab.sh ROUNDS FLAGS JAXDIST_BENCH_FLAGS...}
shift 2
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."

for r in $(seq "$rounds"); do
  for xla_flags in "${XLA_FLAGS:-}" "${XLA_FLAGS:+$XLA_FLAGS }$flags"; do
    XLA_FLAGS="$xla_flags" JAX_ENABLE_COMPILATION_CACHE=false "$PYTHON" -m jaxdist.bench "$@" |
      "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        print(json.dumps({"round": int(sys.argv[1]), **json.loads(line)}), flush=True)' "$r"
  done
done
