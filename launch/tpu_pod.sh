#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: runs the same command on every TPU VM
# worker; jax.distributed finds the other hosts itself (--multihost).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh [--dry-run] \
#     --gin_file=... --gin.MODEL_DIR=gs://bucket/run ...
#
# MODEL_DIR must be visible to every worker (a gs:// path). The repository
# is expected at REMOTE_DIR on each worker (launch/setup.sh installs it).
# Environment: TPU_NAME (required), ZONE (required), PROJECT (optional),
# REMOTE_DIR (default ~/t5x_like), REMOTE_PYTHON (default .venv/bin/python).
set -euo pipefail
DRY_RUN=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
REMOTE_DIR=${REMOTE_DIR:-'~/t5x_like'}
REMOTE_PYTHON=${REMOTE_PYTHON:-.venv/bin/python}
TRAIN="cd $REMOTE_DIR && $REMOTE_PYTHON -m t5x_like.train --multihost"
for arg in "${ARGS[@]}"; do TRAIN+=" $(printf '%q' "$arg")"; done
CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$TRAIN")
if [ -n "${PROJECT:-}" ]; then CMD+=(--project="$PROJECT"); fi
if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
