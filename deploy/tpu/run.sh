#!/bin/bash
# Run jaxdist on every host of a TPU pod slice; JAX detects the pod, so no coordinator flags are needed.
#   deploy/tpu/run.sh my-tpu us-central2-b configs/cifar_dp.py gs://bucket/runs/cifar [--config.mesh.model=4 ...]
# The workdir must be shared by all hosts (a gs:// path: Orbax and tensorboardX write there directly).
set -euo pipefail
TPU=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4; shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d jaxdist ] || git clone https://github.com/OWNER/jaxdist.git
  cd jaxdist && python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . 'jax[tpu]==0.10.2'
  python -m jaxdist.main --config=$CONFIG --workdir=$WORKDIR --config.cpu_devices=0 $*"
