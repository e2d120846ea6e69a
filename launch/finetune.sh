#!/usr/bin/env bash
# Trains one stage of the cascade (configs/pretrain_shapes.py) on every worker of $TPU_NAME, as
# one multi-host JAX program, with checkpoints in WORKDIR_ROOT/train/STAGE on the workers.
# By default that is outputs/ in REPO_DIR, local to each worker, and copied to
# $BUCKET/train/STAGE when the run succeeds: right for a single-host TPU VM. A pod's workers
# must share one workdir: set WORKDIR_ROOT to a folder every worker mounts (e.g. the bucket
# mounted with gcsfuse at the same path on each worker); nothing is copied then.
#
# Usage:
#   TPU_NAME=my-tpu BUCKET=gs://my-bucket/dreamix launch/finetune.sh STAGE [--config.key=value ...]
#   e.g. launch/finetune.sh base --config.batch_size=64
#
# Environment (defaults in brackets; see common.sh and run.sh):
#   TPU_NAME  required
#   BUCKET    required: gs:// root the workdirs are copied to
#   ZONE      [us-west4-a]
#   PROJECT   passed as --project only when set [gcloud's default]
#   REPO_DIR  [~/dreamix_jax]
#   PYTHON    [python3]
#   DETACH    1: do not wait for the run [0]
#   WORKDIR_ROOT  a folder every worker shares, or a gs:// URL (pods) [none: outputs/, then copied to $BUCKET]
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$here/common.sh"
require_bucket

if (( $# < 1 )); then
  echo "usage: $(basename "$0") STAGE [--config.key=value ...]" >&2
  exit 2
fi
stage=$1
shift

if [[ -n ${WORKDIR_ROOT:-} ]]; then
  workdir="${WORKDIR_ROOT%/}/train/$stage"
else
  workdir="outputs/train/$stage"
  export UPLOAD="$workdir $BUCKET/train/$stage"
fi
# config.distributed starts the multi-host runtime, which a pod needs (edit reads it too, sweep as
# config.edit.distributed: sample.sh and sweep.sh pass those).
exec "$here/run.sh" dreamix_jax.train --config "configs/pretrain_shapes.py:$stage" \
  --workdir "$workdir" --config.distributed=true "$@"
