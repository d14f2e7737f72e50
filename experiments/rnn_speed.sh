#!/usr/bin/env bash
# The RNN speed comparison of docs/rnn.md ("Benchmark"), interleaved so that a change in the machine's load
# hits both sides: per round, the data-parallel LSTM step of configs/seqmnist_lstm.py on 8 simulated devices,
# old (commit $OLD: by default 2a960ca, before models/recurrence.py) then new (this tree), the same on 1
# device plus new with glibc's own malloc settings (JAXDIST_MALLOC=glibc: no huge pages,
# jaxdist/host_memory.py), then torch nn.LSTM (experiments/bench_lstm_torch.py) as it starts and with
# jaxdist's glibc.malloc.hugetlb=1. One JSON line per run: jaxdist.bench's or the torch script's, tagged with
# round, code, devices and the 1-minute load average at the start.
#
#   PYTHON=.venv/bin/python TORCH_PYTHON=/tmp/torchvenv/bin/python experiments/rnn_speed.sh [rounds, default 2]
set -euo pipefail
rounds=${1:-2}
OLD=${OLD:-2a960ca}
PYTHON=${PYTHON:-python}
TORCH_PYTHON=${TORCH_PYTHON:-$PYTHON}
absolute() {  # the runs cd into each tree: .venv/bin/python made absolute, its venv symlink kept
  case $1 in */*) echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" ;; *) echo "$1" ;; esac
}
PYTHON=$(absolute "$PYTHON")
TORCH_PYTHON=$(absolute "$TORCH_PYTHON")
repo=$(cd "$(dirname "$0")/.." && pwd)
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
git -C "$repo" archive "$OLD" | tar -x -C "$old"

tag() {  # prefix every JSON line on stdin with the fields of $1
  "$PYTHON" -c 'import json, sys
extra = json.loads(sys.argv[1])
for line in sys.stdin:
    if line.startswith("{"):
        print(json.dumps({**extra, **json.loads(line)}), flush=True)' "$1"
}

fields() {  # round code devices
  echo "{\"round\": $1, \"code\": \"$2\", \"devices\": $3, \"load1\": $(cut -d' ' -f1 /proc/loadavg)}"
}

bench() {  # tree code devices [JAXDIST_MALLOC]
  local args=(--config=configs/seqmnist_lstm.py --steps=20)
  if [ "$3" = 1 ]; then args+=(--config.cpu_devices=1 --config.mesh.data=1); fi
  local tagged
  tagged=$(fields "$r" "$2" "$3")
  (cd "$1" && PYTHONPATH="$1" JAXDIST_MALLOC="${4:-}" env -u GLIBC_TUNABLES "$PYTHON" -m jaxdist.bench "${args[@]}" 2>/dev/null) | tag "$tagged"
}

for r in $(seq "$rounds"); do
  for devices in 8 1; do
    bench "$old" "old-$OLD" "$devices"
    bench "$repo" new "$devices"
  done
  bench "$repo" new-glibc 1 glibc
  tagged=$(fields "$r" torch 1)
  env -u GLIBC_TUNABLES "$TORCH_PYTHON" "$repo/experiments/bench_lstm_torch.py" 2>/dev/null | tag "$tagged"
  tagged=$(fields "$r" torch-hugepages 1)
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$TORCH_PYTHON" "$repo/experiments/bench_lstm_torch.py" 2>/dev/null | tag "$tagged"
done
