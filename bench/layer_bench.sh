#!/usr/bin/env bash
# Model Tailor on one LLaMA-7B decoder layer against a plain PyTorch script
# of the same math, in the same run (see bench/layer_bench.py --help).
# Needs a python3 with torch: $PYTHON if set, else Debian's /usr/bin/python3
# (python3-torch) when it has torch, else the python3 on PATH (a pip torch,
# e.g. a CUDA build for --device cuda).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if /usr/bin/python3 -c 'import torch' >/dev/null 2>&1; then
    py=/usr/bin/python3
  else
    py=python3
  fi
fi
exec "$py" "$here/layer_bench.py" "$@"
