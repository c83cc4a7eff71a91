#!/usr/bin/env bash
# benchmarks/gpu_check.sh: every GPU path of drn-moments measured in one go, in under 8 minutes, on a machine with
# one NVIDIA GPU. Progress goes to stderr; a markdown table for benchmarks/RESULTS.md (with the machine, the CPU
# model and the load before and after) goes to stdout. What it measures: benchmarks/gpu_check.py's docstring.
#
# What to do with a GPU at hand:
#
#   benchmarks/gpu_check.sh | tee gpu_check.md
#
# - With no .venv it first runs scripts/setup.sh with TORCH_SPEC=torch (your platform's CUDA build of PyTorch, a
#   download of a few GB; the set-up is not part of the 8 minutes).
# - With a .venv whose torch sees the GPU, it uses that. A .venv made for CPU (torch==...+cpu) cannot see the GPU:
#   remove it (rm -rf .venv) and run again, or name another interpreter as below.
# - Offline, or in a container image that already has PyTorch with CUDA: PYTHON=python3 benchmarks/gpu_check.sh
#   (the repository needs no installing: PYTHONPATH is set here). Parts whose packages that interpreter lacks
#   (ray for Ray Train; ray and av for the extraction pipeline) are reported as "not measured"; the others run.
#
# Options go to benchmarks/gpu_check.py, e.g. --parts c3d,ground or --json facts.json. GPU_CHECK_LIMIT_S (470)
# is the hard limit of the measurements in seconds.
# Exit status: 0 every part ran; 1 a part failed (its row says why); 2 bad options; 3 no NVIDIA GPU (one line on
# stderr, nothing else) or no Python whose PyTorch sees the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
LIMIT_S=${GPU_CHECK_LIMIT_S:-470}

if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1 || ! "$NVIDIA_SMI" -L 2>/dev/null | grep -q '^GPU '; then
  echo "error: no NVIDIA GPU on this machine (nvidia-smi lists none); gpu_check.sh measures the GPU paths only" >&2
  exit 3
fi

sees_gpu() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
online() {
  timeout 10 "$1" -c 'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=8)' \
    >/dev/null 2>&1
}

base=$(command -v python3 || command -v python || true)
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ] && sees_gpu .venv/bin/python; then
  py=.venv/bin/python
else
  if [ ! -e .venv ] && [ -n "$base" ] && online "$base"; then
    echo "no .venv: setting it up with TORCH_SPEC=${TORCH_SPEC:-torch} (scripts/setup.sh, not timed)" >&2
    TORCH_SPEC=${TORCH_SPEC:-torch} ./scripts/setup.sh >&2 || echo "scripts/setup.sh failed" >&2
  elif [ -x .venv/bin/python ]; then
    echo "note: the torch of .venv cannot see the GPU (a CPU build?); rm -rf .venv and run again to set it up" >&2
  fi
  if [ -x .venv/bin/python ] && sees_gpu .venv/bin/python; then
    py=.venv/bin/python
  elif [ -n "$base" ] && sees_gpu "$base"; then
    py=$base
    echo "using $base, whose PyTorch sees the GPU" >&2
  else
    echo "error: no Python here has a PyTorch that sees the GPU: run TORCH_SPEC=torch scripts/setup.sh (online)" \
      "or give PYTHON=/path/to/python" >&2
    exit 3
  fi
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpu=$("$NVIDIA_SMI" --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
before=$(uptime)
echo "gpu_check: $gpu; CPU $cpu; python $py" >&2
timeout --signal=INT --kill-after=20 "$LIMIT_S" "$py" benchmarks/gpu_check.py --budget-s $((LIMIT_S - 50)) "$@"
status=$?
after=$(uptime)
echo
echo "GPU: $gpu (nvidia-smi); CPU: ${cpu:-unknown} (lscpu model name)"
echo "uptime before: ${before# }"
echo "uptime after:  ${after# }"
[ "$status" -eq 124 ] && echo "stopped at the ${LIMIT_S} s limit" >&2
exit "$status"
