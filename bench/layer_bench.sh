#!/usr/bin/env bash
# Model Tailor on one LLaMA-7B decoder layer against a plain PyTorch script
# of the same math, in the same run (see bench/layer_bench.py --help).
# Needs Debian's python3-torch: /usr/bin/python3, whatever python3 is on
# PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec /usr/bin/python3 "$here/layer_bench.py" "$@"
