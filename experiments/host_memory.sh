#!/bin/bash
# The host-memory setting of jaxdist/host_memory.py, by A/B: each command with glibc's own malloc settings
# (JAXDIST_MALLOC=glibc) and with the default (JAXDIST_MALLOC=hugepages: the entry point restarts with
# glibc.malloc.hugetlb=1), alternated run by run, ROUNDS times: the LSTM of configs/seqmnist_lstm.py on 1
# device (90 MB of temporaries per step) and on 8, and the digits CNN and ResNet-8 on 1 and on 8 simulated
# devices (small steps). One JSON line per run (jaxdist.bench's, tagged with the case and the setting;
# host_page_faults_per_step shows the effect):
#   bash experiments/host_memory.sh [ROUNDS [CASE...]] > host_memory.jsonl   (docs/benchmarks.md, "Host memory")
# CASE: some of the case names below (default: all, in this order).
set -u
ROUNDS=${1:-2}
tag() { python -c "import json,sys; [print(json.dumps({'case': sys.argv[1], 'malloc': sys.argv[2], **json.loads(l)}), flush=True) for l in sys.stdin if l.startswith('{')]" "$1" "$2"; }
declare -A CASES=(
  [lstm_1dev]="--config=configs/seqmnist_lstm.py --config.cpu_devices=1 --config.mesh.data=1"
  [lstm_8dev]="--config=configs/seqmnist_lstm.py"
  [digits_cnn_1dev]="--config=configs/digits_dp.py --config.model.name=cnn --config.cpu_devices=1 --config.mesh.data=1"
  [digits_resnet8_1dev]="--config=configs/digits_dp.py --config.model.name=resnet8 --config.cpu_devices=1 --config.mesh.data=1"
  [digits_cnn_8dev]="--config=configs/digits_dp.py --config.model.name=cnn"
  [digits_resnet8_8dev]="--config=configs/digits_dp.py --config.model.name=resnet8"
)
shift $(($# > 0 ? 1 : 0))
RUN=("$@")
[ ${#RUN[@]} -gt 0 ] || RUN=(lstm_1dev lstm_8dev digits_cnn_1dev digits_resnet8_1dev digits_cnn_8dev digits_resnet8_8dev)
for c in "${RUN[@]}"; do
  [ -n "${CASES[$c]:-}" ] || { echo "host_memory.sh: unknown case '$c'; valid: ${!CASES[*]}" >&2; exit 2; }
done
for _ in $(seq "$ROUNDS"); do
  for c in "${RUN[@]}"; do
    for m in glibc hugepages; do
      env -u GLIBC_TUNABLES JAXDIST_MALLOC=$m python -m jaxdist.bench ${CASES[$c]} --steps=20 2>/dev/null | tag "$c" "$m"
    done
  done
done
