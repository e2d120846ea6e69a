# shellcheck shell=bash
# Settings and helpers shared by the Cloud TPU launch scripts; sourced by them, never run.
#
# Environment (defaults in brackets):
#   TPU_NAME          required: the TPU VM or pod slice (and, with QUEUED=1, its queued resource)
#   ZONE              zone of the TPU [us-west4-a]
#   PROJECT           Google Cloud project; passed as --project only when set [gcloud's default]
#   ACCELERATOR_TYPE  TPU type and size [v5litepod-16]
#   RUNTIME_VERSION   TPU VM software version [v2-alpha-tpuv5-lite]
#   REPO_DIR          the repository's directory on every worker; a leading ~/ is the workers'
#                     home, not this machine's [~/dreamix_jax]
#   PYTHON            interpreter on the workers [python3: stock TPU VM images have no `python`]
#   BUCKET            gs:// root of the runs' outputs: sample.sh and sweep.sh write their workdirs
#                     there, finetune.sh copies a local workdir there; checked by require_bucket, i.e.
#                     only by the scripts that start runs [none]
#
# Usage (from another launch script):
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#   tpu_ssh_all "cd $(remote_repo_dir) && ls"

# SC2034: some settings are only read by the scripts that source this file.
# SC2088: a quoted ~ is deliberate here: REPO_DIR's ~ is the workers' home, expanded there.
# shellcheck disable=SC2034,SC2088

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

[[ -n ${TPU_NAME:-} ]] || die "TPU_NAME is not set: export TPU_NAME=<name of the TPU VM>"
ZONE=${ZONE:-us-west4-a}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5litepod-16}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}
# Quoted so that ~ is left for the workers' shell to expand.
REPO_DIR=${REPO_DIR:-"~/dreamix_jax"}
PYTHON=${PYTHON:-python3}

# setup.sh moves an earlier copy of REPO_DIR aside: never let that be the home or root directory.
case ${REPO_DIR%/} in
  "" | "~" | .) die "REPO_DIR must name a directory of its own, not '$REPO_DIR'" ;;
esac

# Flags every gcloud call takes: the zone, and the project only when one was given.
GCLOUD_FLAGS=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then
  GCLOUD_FLAGS+=(--project="$PROJECT")
fi

# Runs one shell command line on every worker of the TPU at once. A preempted worker vanishes
# without closing its connection: keepalives end the ssh (status 255) after about 5 minutes instead
# of leaving it, and supervise.sh, waiting for hours.
tpu_ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
    --ssh-flag=-oServerAliveInterval=60 --ssh-flag=-oServerAliveCountMax=5 --command="$1"
}

# The value of FIELD (e.g. state) in `gcloud compute tpus KIND describe $TPU_NAME`, KIND being
# tpu-vm or queued-resources; MISSING when there is no such resource. Any other error stops the
# script: a slice that cannot be seen must not be taken for a lost one, and deleted.
describe_value() {
  local errors value
  errors=$(mktemp)
  if value=$(gcloud compute tpus "$1" describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --format="value($2)" \
    2> "$errors"); then
    rm -f "$errors"
    echo "$value"
  elif grep -q NOT_FOUND "$errors"; then
    rm -f "$errors"
    echo MISSING
  else
    cat "$errors" >&2
    rm -f "$errors"
    die "could not describe $TPU_NAME (gcloud's error is above)"
  fi
}

# Progress of waits and restarts that last hours, read long after: each line says when.
log() {
  echo "$(date -u '+%Y-%m-%d %H:%M:%S') $(basename "$0"): $*"
}

# REPO_DIR as one word of a command line for the workers' shell: quoted against spaces, with a
# leading ~/ left bare so that it expands there.
remote_repo_dir() {
  if [[ $REPO_DIR == "~/"* ]]; then
    printf '~/%q' "${REPO_DIR#"~/"}"
  else
    printf '%q' "$REPO_DIR"
  fi
}

# The runs' outputs go to GCS (written there, or copied when a run ends); the bucket must be a gs:// URL.
require_bucket() {
  [[ -n ${BUCKET:-} ]] || die "BUCKET is not set: export BUCKET=gs://<bucket>/<path> (where the runs' outputs go)"
  [[ $BUCKET == gs://* ]] || die "BUCKET must be a gs:// path, got '$BUCKET'"
  BUCKET=${BUCKET%/}
}
