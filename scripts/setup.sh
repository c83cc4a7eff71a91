#!/usr/bin/env bash
# Create .venv and install the project with its dev extra. Idempotent: reinstalls only when pyproject.toml changes.
# TORCH_SPEC picks the torch build installed first (default torch==2.13.0, the CPU build this project is tested
# with); set TORCH_SPEC=torch for your platform's default build (e.g. CUDA on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.drn-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
