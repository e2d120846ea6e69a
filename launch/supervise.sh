#!/usr/bin/env bash
# Runs finetune.sh, sample.sh or sweep.sh on $TPU_NAME and carries it through preemptions. When
# the command ends, the slice is described: if it is no longer healthy (the queued resource not
# ACTIVE, e.g. SUSPENDED, or the TPU PREEMPTED, missing or otherwise not READY), the slice is
# deleted and created again (with QUEUED=1, waiting in the queue for capacity), set up again, and
# the same command is rerun: with the same workdir, it resumes from the last checkpoint, finetune
# or finished trial. A command that fails while the slice is healthy is not a preemption: the
# supervisor stops with its exit code. A command that exits 0 on a preempted slice is rerun too,
# since training saves and exits cleanly on a preemption notice.
#
# Only a workdir that outlives the slice lets the rerun resume: sample.sh's and sweep.sh's, in the
# bucket, and finetune.sh's with WORKDIR_ROOT on a folder every worker mounts (e.g. the bucket
# through gcsfuse). outputs/ in REPO_DIR, where finetune.sh without WORKDIR_ROOT writes, is lost
# with a deleted slice, so its rerun starts over.
#
# Usage:
#   TPU_NAME=my-pod QUEUED=1 CAPACITY=spot BUCKET=gs://my-bucket/dreamix WORKDIR_ROOT=/mnt/dreamix \
#       launch/supervise.sh finetune.sh base --config.batch_size=64
#
# Environment (defaults in brackets; see common.sh, create.sh and the script it runs):
#   TPU_NAME      required
#   MAX_RESTARTS  how many times the slice may be recreated before giving up [3]
#   QUEUED        1: the slice is a queued resource, recreated as one [0]
#   CAPACITY, QUEUE_TIMEOUT, POLL_SECONDS
#                 how create.sh asks for the slice again and waits for it
#   WORKDIR_ROOT  finetune.sh's shared workdir, which a recreated slice keeps [none]
#   DETACH        must not be 1: the supervisor must see how the command ended [0]
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$here/common.sh"

usage="usage: $(basename "$0") finetune.sh|sample.sh|sweep.sh [ARGS...]   e.g. finetune.sh base"
if (($# < 1)); then
  echo "$usage" >&2
  exit 2
fi
script=${1##*/}
shift
case $script in
  finetune.sh | sample.sh | sweep.sh) ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
[[ ${DETACH:-0} != 1 ]] || die "DETACH=1 returns before the command ends, so a preemption could not be seen; unset it"
MAX_RESTARTS=${MAX_RESTARTS:-3}
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "MAX_RESTARTS must be a whole number, got '$MAX_RESTARTS'"
if [[ $script == finetune.sh && -z ${WORKDIR_ROOT:-} ]]; then
  log "note: $script writes its workdir on the workers' disks, which a recreated slice does not have:" \
    "after a preemption it starts over."
fi

# Sets `problem` to what is wrong with the slice (empty when it can run the command) and `found` to
# the state of what delete.sh would delete (MISSING when there is nothing to delete).
check_slice() {
  problem=
  if [[ ${QUEUED:-0} == 1 ]]; then
    found=$(describe_value queued-resources state.state)
    if [[ $found != ACTIVE ]]; then
      problem="its queued resource is $found"
      return
    fi
  fi
  local node
  node=$(describe_value tpu-vm state)
  [[ ${QUEUED:-0} == 1 ]] || found=$node
  if [[ $node != READY ]]; then
    problem="the TPU is $node"
  fi
}

# Ends the supervision with the command's exit status (1 when it had none to give) and a sentence.
stop() {
  local status=$1
  shift
  log "$@" >&2
  exit "$((status == 0 ? 1 : status))"
}

# A slice that is missing or down already is left to create.sh and setup.sh: creating one here
# would also follow a command that fails before it reaches the slice (e.g. BUCKET unset).
check_slice
[[ -z $problem ]] || die "$TPU_NAME cannot run $script, $problem:" \
  "create it with launch/create.sh and set it up with launch/setup.sh first"

attempts=$((MAX_RESTARTS + 1))
attempt=1
while true; do
  log "attempt $attempt/$attempts: $script $*"
  status=0
  "$here/$script" "$@" || status=$?
  check_slice
  if [[ -z $problem ]]; then
    if ((status == 0)); then
      log "$script succeeded on attempt $attempt/$attempts."
      exit 0
    fi
    log "$script failed with exit code $status on a healthy $TPU_NAME: not a preemption, so it is not rerun" \
      "(the workers' logs/ say why)." >&2
    exit "$status"
  fi
  if ((status == 0)); then
    log "$script exited 0, but $TPU_NAME was preempted ($problem): a preemption notice may have stopped it early."
  else
    log "$script failed with exit code $status: $TPU_NAME was preempted or lost a worker ($problem)."
  fi
  if ((attempt == attempts)); then
    stop "$status" "giving up after $MAX_RESTARTS restarts (MAX_RESTARTS);" \
      "once $TPU_NAME is back, the same command resumes."
  fi
  log "recreating $TPU_NAME for attempt $((attempt + 1))/$attempts:" \
    "the same command, with the same workdir."
  if [[ $found != MISSING ]]; then
    "$here/delete.sh" || stop $? "could not delete $TPU_NAME (see above), so it cannot be recreated."
  fi
  "$here/create.sh" \
    || stop $? "could not create $TPU_NAME again (see above); once it is back, the same command resumes."
  log "setting up $TPU_NAME again."
  "$here/setup.sh" \
    || stop $? "could not set up $TPU_NAME again (see above); once it is, the same command resumes."
  attempt=$((attempt + 1))
done
