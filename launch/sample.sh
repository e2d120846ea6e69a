#!/usr/bin/env bash
# Runs a Dreamix edit (configs/dreamix.py: finetune on the input, then sample) on every worker of
# $TPU_NAME, as one multi-host JAX program (--config.distributed=true): the cascade and the batch
# of edits are laid out over the chips of every worker. The workdir is $BUCKET/edit, which every
# worker reads and worker 0 alone writes: the finetune store, then each edit's video.mp4,
# comparison.mp4 and result.json. Running the same command again reuses the stored finetune. An
# input (--config.input) must be a path every worker can read, e.g. a gs:// URL.
#
# Usage:
#   TPU_NAME=my-tpu BUCKET=gs://my-bucket/dreamix launch/sample.sh VARIANT [--config.key=value ...]
#   e.g. launch/sample.sh video --config.input=gs://my-bucket/clip.mp4 --config.prompt="a bear's dance, in the snow"
#
# Environment (defaults in brackets; see common.sh and run.sh):
#   TPU_NAME  required
#   BUCKET    required: gs:// root; the workdir is $BUCKET/edit
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

exec "$here/run.sh" dreamix_jax.edit --config "configs/dreamix.py:$variant" --workdir "$BUCKET/edit" \
  --config.distributed=true "$@"
