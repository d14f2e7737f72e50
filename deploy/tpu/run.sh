#!/bin/bash
# Run jaxdist on every host of a Cloud TPU VM slice, from this checkout (no clone, no image):
#   deploy/tpu/run.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
# Copies the repository's code to ~/jaxdist on each host and starts deploy/tpu/host.sh there, which makes
# ~/jaxdist/.venv with the [tpu] extra on first use. TPU VM images ship Python 3.10: set PYTHON to a 3.11+
# interpreter on the hosts, single-quoted so that each host expands it (deploy/README.md). WORKDIR must be
# one local path that all hosts share, e.g. a bucket mounted with gcsfuse (a gs:// URL is refused).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]" >&2; exit 2; }
TPU=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4; shift 4
cd "$(dirname "$0")/../.."
archive=$(mktemp --suffix=.tgz)
tar czf "$archive" pyproject.toml README.md jaxdist configs deploy
gcloud compute tpus tpu-vm scp "$archive" "$TPU:jaxdist-src.tgz" --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="mkdir -p jaxdist && \
  tar xzf jaxdist-src.tgz -C jaxdist && PYTHON=${PYTHON:-python3} jaxdist/deploy/tpu/host.sh \
  --config=$CONFIG --workdir=$WORKDIR $*"
rm -f "$archive"
