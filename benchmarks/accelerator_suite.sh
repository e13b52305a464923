#!/usr/bin/env bash
# The device suite in one command (benchmarks/accelerator_suite.py says what it measures):
#   bash benchmarks/accelerator_suite.sh            # one H100/H200 or TPU chip, <= 8 min
#   bash benchmarks/accelerator_suite.sh --smoke    # tiny models on a CPU, < 2 min
# Extra arguments go to the driver (--out, --budget-s, --batch, --length, --peak-flops ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec timeout 480 "$PYTHON" benchmarks/accelerator_suite.py "$@"
