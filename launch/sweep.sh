#!/usr/bin/env bash
# Runs a sweep (configs/sweeps/NAME.py, dreamix_jax.sweep) on every worker of $TPU_NAME, as one
# multi-host JAX program (--config.edit.distributed=true): every trial runs on the chips of every
# worker, finetunes stacked trials_per_program at a time on the mesh's trial axis. The workdir is
# $BUCKET/sweeps/NAME, which every worker reads and worker 0 alone writes: manifest.json, the
# finetune store, trials/<id>/ and report.html. Running the same command again skips the finished
# trials. An input (--config.edit.input) must be a path every worker can read, e.g. a gs:// URL.
#
# Usage:
#   TPU_NAME=my-tpu BUCKET=gs://my-bucket/dreamix launch/sweep.sh NAME[:VARIANT] [--config.key=value ...]
#   e.g. launch/sweep.sh shapes_edit --config.batch_size=48 --config.trials_per_program=4
#
# Environment (defaults in brackets; see common.sh and run.sh):
#   TPU_NAME  required
#   BUCKET    required: gs:// root; the workdir is $BUCKET/sweeps/NAME (NAME-VARIANT for NAME:VARIANT)
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
folder=${sweep//:/-}  # shapes_edit:smoke → $BUCKET/sweeps/shapes_edit-smoke

exec "$here/run.sh" dreamix_jax.sweep --config "configs/sweeps/$name.py${sweep#"$name"}" \
  --workdir "$BUCKET/sweeps/$folder" --config.edit.distributed=true "$@"
