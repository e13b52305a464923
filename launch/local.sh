#!/usr/bin/env bash
# Train on this machine: one process, all local devices (CPU, one GPU host,
# or one TPU VM). Every argument is passed to `python -m t5x_like.train`.
#
#   launch/local.sh [--dry-run] [--cpu-devices=N] --gin_file=... --gin.MODEL_DIR=... ...
#
#   --dry-run         print the exact command, run nothing
#   --cpu-devices=N   N fake CPU devices (try data/fsdp/tensor meshes on a laptop)
# Environment: PYTHON (default: .venv/bin/python if present, else python3).
#
# GPU host: set up with `T5X_LIKE_ACCELERATOR=cuda bash launch/setup.sh` (the CUDA
# build of jax); with JAX_PLATFORMS unset the run then uses the GPUs (cuda,cpu).
# Smoke test (bf16, fused attention, synthetic data; docs/scale.md):
#   launch/local.sh --gin_file=gin_configs/models/decoder_only/small.gin \
#     --gin_file=gin_configs/runs/gpu_smoke.gin --gin.MODEL_DIR=/tmp/gpu_smoke
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --cpu-devices=*) ARGS+=("--cpu_devices=${arg#*=}") ;;
    *) ARGS+=("$arg") ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CMD=("$PYTHON" -m t5x_like.train "${ARGS[@]}")
if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
