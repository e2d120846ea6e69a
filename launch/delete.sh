#!/usr/bin/env bash
# Deletes the TPU VM or pod slice $TPU_NAME, without asking (it bills while it exists).
#
# Usage:
#   TPU_NAME=my-tpu launch/delete.sh
#   TPU_NAME=my-pod QUEUED=1 launch/delete.sh   # what `QUEUED=1 launch/create.sh` made
#
# Environment (defaults in brackets; see common.sh):
#   TPU_NAME  required: name of the TPU (and of its queued resource with QUEUED=1)
#   ZONE      [us-west4-a]
#   PROJECT   passed as --project only when set [gcloud's default]
#   QUEUED    1: delete the queued resource; --force deletes its TPU with it [0]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ ${QUEUED:-0} == 1 ]]; then
  gcloud compute tpus queued-resources delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet --force
else
  gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
fi
