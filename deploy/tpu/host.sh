#!/bin/bash
# One host of a TPU slice (run.sh starts it on every host): make the environment with the [tpu] extra,
# then run jaxdist.main with the given arguments. JAX detects the pod, so no coordinator flags.
#   deploy/tpu/host.sh --config=configs/cifar_dp.py --workdir=/mnt/bucket/runs/cifar [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/env.sh
jaxdist_env tpu || exit 2
exec "$VENV/bin/python" -m jaxdist.main "$@" --config.cpu_devices=0
