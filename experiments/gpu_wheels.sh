#!/bin/bash
# Wheels for a GPU or TPU machine without network (the device tool's machines): jaxdist's core
# dependencies but the accelerator stack (jax, jaxlib, flax, optax, orbax-checkpoint, numpy), which such a
# machine brings in its own versions, with their own dependencies, for its Python, into wheels/
# (git-ignored; pass carry=["wheels"] to the device tool, 64 MiB in all with the working tree).
# experiments/gpu_main.sh installs from them what the machine lacks. Run here, where the registry is reachable:
#
#   bash experiments/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the H100 machines' Python
#
# tensorflow-datasets is left out (it reads datasets that a machine without network cannot download), and
# scikit-learn comes without its dependencies (scipy alone is 35 MB): jaxdist only reads the digits file
# inside it (jaxdist/data/digits.py), it never imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-3.12}
PY=${PYTHON:-python3}
# Line 1: the pins to download with their dependencies; line 2: scikit-learn's, to download without.
mapfile -t pins < <("$PY" - <<'PYTHON'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
skip = {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn", "tensorflow-datasets"}
print(" ".join(d for d in deps if re.split(r"[=<>!~ \[]", d)[0] not in skip))
print(next(d for d in deps if d.startswith("scikit-learn")))
PYTHON
)
DOWNLOAD=(-m pip download -q --only-binary=:all: --python-version "$VERSION" -d wheels --platform manylinux2014_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)
rm -rf wheels
# shellcheck disable=SC2086  # one pin per word
"$PY" "${DOWNLOAD[@]}" ${pins[0]} portpicker  # grain imports portpicker (process_prefetch) without requiring it
"$PY" "${DOWNLOAD[@]}" --no-deps "${pins[1]}"
rm -f wheels/numpy-*.whl  # the machine's jax brings its numpy
du -sh wheels
