#!/usr/bin/env bash
# Creates the TPU VM or pod slice $TPU_NAME.
#
# Usage:
#   TPU_NAME=my-tpu launch/create.sh
#   TPU_NAME=my-pod QUEUED=1 launch/create.sh   # pods: wait in a queue until capacity frees up
#
# Environment (defaults in brackets; see common.sh):
#   TPU_NAME          required: name of the TPU (and of its queued resource with QUEUED=1)
#   ZONE              [us-west4-a]
#   PROJECT           passed as --project only when set [gcloud's default]
#   ACCELERATOR_TYPE  [v5litepod-16]
#   RUNTIME_VERSION   [v2-alpha-tpuv5-lite]
#   QUEUED            1: request a queued resource, the way to get large slices [0]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ ${QUEUED:-0} == 1 ]]; then
  # The queued resource and the TPU node it creates share one name, so delete.sh needs only that.
  gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION"
  echo "Queued; 'gcloud compute tpus queued-resources describe $TPU_NAME --zone=$ZONE' shows when it is ACTIVE."
else
  gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi
