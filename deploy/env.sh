# shellcheck shell=bash
# Sourced by deploy/slurm/train.sbatch and deploy/tpu/host.sh, from the repository root:
#   . deploy/env.sh && jaxdist_env cuda12      # or tpu
# leaves $VENV holding this checkout installed with that extra. VENV is $JAXDIST_VENV or ./.venv; it is
# created with $PYTHON (default python3, which must be >= 3.11) on first use, and reinstalled when
# pyproject.toml or the extra changes. The install is editable, so code changes need no reinstall.
jaxdist_env() {
  local extra=$1 stamp
  VENV=${JAXDIST_VENV:-$PWD/.venv}
  stamp="$(sha256sum pyproject.toml | cut -c1-16) $extra"
  [ "$(cat "$VENV/.jaxdist-installed" 2>/dev/null)" = "$stamp" ] && return 0
  PYTHON=${PYTHON:-python3}
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "jaxdist: error: jaxdist needs Python >= 3.11 but PYTHON=$PYTHON is" \
      "$("$PYTHON" --version 2>&1 | head -1 || true) on $(hostname); install 3.11+ (e.g." \
      "'curl -LsSf https://astral.sh/uv/install.sh | sh && ~/.local/bin/uv python install 3.11') and rerun with" \
      "PYTHON=\$(~/.local/bin/uv python find 3.11)" >&2
    return 2
  fi
  "$PYTHON" -m venv "$VENV" && "$VENV/bin/pip" install -q --upgrade pip && "$VENV/bin/pip" install -q -e ".[$extra]" \
    && echo "$stamp" > "$VENV/.jaxdist-installed"
}
