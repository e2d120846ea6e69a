#!/usr/bin/env bash
# Creates the TPU VM or pod slice $TPU_NAME. With QUEUED=1 it waits until the queued resource is
# ACTIVE (capacity can take hours to free up for a large slice), printing each new state, and
# stops with the reason when the request FAILED or was SUSPENDED.
#
# Usage:
#   TPU_NAME=my-tpu launch/create.sh
#   TPU_NAME=my-pod QUEUED=1 launch/create.sh                 # pods: wait in a queue until capacity frees up
#   TPU_NAME=my-pod QUEUED=1 CAPACITY=spot launch/create.sh   # cheaper, but preemptible: see supervise.sh
#
# Environment (defaults in brackets; see common.sh):
#   TPU_NAME          required: name of the TPU (and of its queued resource with QUEUED=1)
#   ZONE              [us-west4-a]
#   PROJECT           passed as --project only when set [gcloud's default]
#   ACCELERATOR_TYPE  [v5litepod-16]
#   RUNTIME_VERSION   [v2-alpha-tpuv5-lite]
#   QUEUED            1: request a queued resource, the way to get large slices [0]
#   CAPACITY          on-demand, spot (--spot: preemptible at any time, at a discount) or reserved
#                     (--reserved: the project's reservation) [on-demand]
#   QUEUE_TIMEOUT     with QUEUED=1, seconds to wait for ACTIVE before giving up; the request stays
#                     queued then [7200]
#   POLL_SECONDS      with QUEUED=1, seconds between two looks at the request's state [30]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CAPACITY=${CAPACITY:-on-demand}
QUEUE_TIMEOUT=${QUEUE_TIMEOUT:-7200}
POLL_SECONDS=${POLL_SECONDS:-30}
# Checked before anything is requested, so that a typo leaves no request behind.
flags=("${GCLOUD_FLAGS[@]}" --accelerator-type="$ACCELERATOR_TYPE")
case $CAPACITY in
  on-demand) ;;
  spot) flags+=(--spot) ;;
  reserved) flags+=(--reserved) ;;
  *) die "CAPACITY must be on-demand, spot or reserved, got '$CAPACITY'" ;;
esac
[[ $QUEUE_TIMEOUT =~ ^[0-9]+$ && $POLL_SECONDS =~ ^[0-9]+$ ]] \
  || die "QUEUE_TIMEOUT and POLL_SECONDS must be whole numbers of seconds," \
    "got '$QUEUE_TIMEOUT' and '$POLL_SECONDS'"

if [[ ${QUEUED:-0} != 1 ]]; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" --version="$RUNTIME_VERSION"
  exit
fi

# The queued resource and the TPU node it creates share one name, so delete.sh needs only that.
gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" "${flags[@]}" \
  --runtime-version="$RUNTIME_VERSION"
log "queued $TPU_NAME ($CAPACITY); waiting up to ${QUEUE_TIMEOUT}s for it to be ACTIVE" \
  "(Ctrl-C stops the wait, not the request)."
start=$SECONDS
shown=
shown_at=$start
while true; do
  state=$(describe_value queued-resources state.state)
  waited=$((SECONDS - start))
  case $state in
    ACTIVE)
      log "$TPU_NAME is ACTIVE after ${waited}s."
      exit 0
      ;;
    FAILED)
      reason=$(describe_value queued-resources state.failedData.error.message)
      die "the queued resource $TPU_NAME FAILED (${reason:-gcloud gives no reason});" \
        "QUEUED=1 launch/delete.sh removes it"
      ;;
    SUSPENDING | SUSPENDED)
      die "the queued resource $TPU_NAME is $state: its capacity was taken back before it could be used;" \
        "QUEUED=1 launch/delete.sh removes it"
      ;;
    MISSING | DELETING)
      die "the queued resource $TPU_NAME is $state: it was deleted while this waited for it"
      ;;
  esac
  if ((waited >= QUEUE_TIMEOUT)); then
    die "the queued resource $TPU_NAME is still $state after ${waited}s (QUEUE_TIMEOUT) and stays queued:" \
      "'gcloud compute tpus queued-resources describe $TPU_NAME --zone=$ZONE' shows when it is ACTIVE;" \
      "QUEUED=1 launch/delete.sh gives it up"
  fi
  # A new state at once, an unchanged one every 10 minutes: enough to see that the wait goes on.
  if [[ $state != "$shown" ]] || ((SECONDS - shown_at >= 600)); then
    log "$TPU_NAME is $state after ${waited}s; waiting."
    shown=$state
    shown_at=$SECONDS
  fi
  sleep "$POLL_SECONDS"
done
