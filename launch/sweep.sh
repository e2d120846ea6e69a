#!/usr/bin/env bash
# Runs the sweep configs/sweeps/NAME.py on every worker of $TPU_NAME, writing to
# $BUCKET/sweeps/NAME.
#
# Usage:
#   TPU_NAME=my-tpu BUCKET=gs://my-bucket/dreamix launch/sweep.sh NAME [extra flags ...]
#
# Environment (defaults in brackets; see common.sh and run.sh):
#   TPU_NAME  required
#   BUCKET    required: gs:// root of the workdirs
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
  echo "usage: $(basename "$0") NAME [extra flags ...]" >&2
  exit 2
fi
name=$1
shift

exec "$here/run.sh" dreamix_jax.sweep --config "configs/sweeps/$name.py" \
  --workdir "$BUCKET/sweeps/$name" "$@"
