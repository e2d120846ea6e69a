#!/usr/bin/env bash
# Runs a Dreamix edit (configs/dreamix.py: finetune on the input, then sample) on every worker of
# $TPU_NAME. The edit writes to outputs/edit in REPO_DIR on the worker, which is copied to
# $BUCKET/edit when it succeeds. The editing entry point is single-host: use a one-host TPU
# (e.g. ACCELERATOR_TYPE=v5litepod-8), since every worker of a pod would run the same edit.
#
# Usage:
#   TPU_NAME=my-tpu BUCKET=gs://my-bucket/dreamix launch/sample.sh VARIANT [--config.key=value ...]
#   e.g. launch/sample.sh video --config.prompt="a bear's dance, in the snow"
#
# Environment (defaults in brackets; see common.sh and run.sh):
#   TPU_NAME  required
#   BUCKET    required: gs:// root the workdirs are copied to
#   ZONE      [us-west4-a]
#   PROJECT   passed as --project only when set [gcloud's default]
#   REPO_DIR  [~/dreamix_jax]
#   PYTHON    [python3]
#   DETACH    1: do not wait for the run [0]
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$here/common.sh"
require_bucket

if (( $# < 1 )); then
  echo "usage: $(basename "$0") video|image|subject [--config.key=value ...]" >&2
  exit 2
fi
variant=$1
shift

UPLOAD="outputs/edit $BUCKET/edit" exec "$here/run.sh" dreamix_jax.edit --config "configs/dreamix.py:$variant" \
  --workdir outputs/edit "$@"
