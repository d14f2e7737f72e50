#!/bin/bash
# Installs what a GPU (or TPU) machine without network lacks of jaxdist's core dependencies, from wheels/
# (experiments/gpu_wheels.sh, run where the registry is reachable, then carried along). The machine's own
# jax, flax, optax and orbax stay. Run from anywhere; gpu_main.sh and gpu_bench.sh run it first.
#
#   bash experiments/gpu_deps.sh          # PYTHON=python3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d wheels ]; then
  missing=$("$PY" - <<'PYTHON'
import importlib.util, re, tomllib
modules = {"absl-py": "absl", "array-record": "array_record", "ml-collections": "ml_collections", "pillow": "PIL"}
deps = [re.split(r"[=<>!~ \[]", d)[0] for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
deps = [d for d in deps if d != "tensorflow-datasets"]  # not in wheels/ (gpu_wheels.sh)
print(" ".join(d for d in [*deps, "portpicker"] if importlib.util.find_spec(modules.get(d, d).replace("-", "_")) is None))
PYTHON
)
  if [[ " $missing " == *" scikit-learn "* ]]; then  # only its digits file is read: no scipy (gpu_wheels.sh)
    "$PY" -m pip install -q --no-index --find-links=wheels --no-deps scikit-learn
    missing=${missing//scikit-learn/}
  fi
  if [ -n "${missing// /}" ]; then
    echo "installing from wheels/: $missing" >&2
    # shellcheck disable=SC2086  # one name per word
    "$PY" -m pip install -q --no-index --find-links=wheels $missing
  fi
fi
