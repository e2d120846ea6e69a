#!/usr/bin/env bash
# Runs a sweep (configs/sweeps/NAME.py, dreamix_jax.sweep) on every worker of $TPU_NAME. The sweep
# writes to outputs/sweeps/NAME in REPO_DIR on the worker (finished trials survive a restart:
# run the same command again to resume), which is copied to $BUCKET/sweeps/NAME, report.html
# included, when it succeeds. Sweeps are single-host: use a one-host TPU (e.g.
# ACCELERATOR_TYPE=v5litepod-8), since every worker of a pod would run the same trials.
#
# Usage:
#   TPU_NAME=my-tpu BUCKET=gs://my-bucket/dreamix launch/sweep.sh NAME[:VARIANT] [--config.key=value ...]
#   e.g. launch/sweep.sh shapes_edit --config.batch_size=48
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
  echo "usage: $(basename "$0") NAME[:VARIANT] [--config.key=value ...]   e.g. shapes_edit" >&2
  exit 2
fi
sweep=$1
shift
name=${sweep%%:*}
[[ -f "$here/../configs/sweeps/$name.py" ]] || die "no sweep config configs/sweeps/$name.py"
folder=${sweep//:/-}  # shapes_edit:smoke → outputs/sweeps/shapes_edit-smoke

UPLOAD="outputs/sweeps/$folder $BUCKET/sweeps/$folder" exec "$here/run.sh" dreamix_jax.sweep \
  --config "configs/sweeps/$name.py${sweep#"$name"}" --workdir "outputs/sweeps/$folder" "$@"
