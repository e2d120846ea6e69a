#!/usr/bin/env bash
# Runs `$PYTHON -m MODULE ARGS...` from $REPO_DIR on every worker of $TPU_NAME at once, each
# worker logging to $REPO_DIR/logs/worker-<hostname>.log. Processes of an earlier run still
# holding the TPU are stopped first. finetune.sh, sample.sh and sweep.sh wrap this.
#
# Usage (the module and its arguments as separate words, quoted as for a local command):
#   TPU_NAME=my-tpu launch/run.sh dreamix_jax.train --config configs/pretrain_shapes.py:base \
#       --workdir gs://my-bucket/dreamix/train/base --config.distributed=true
#   DETACH=1 TPU_NAME=my-tpu launch/run.sh ...   # return at once; follow the logs on the workers
#
# Environment (defaults in brackets; see common.sh):
#   TPU_NAME  required
#   ZONE      [us-west4-a]
#   PROJECT   passed as --project only when set [gcloud's default]
#   REPO_DIR  where setup.sh put the repository on the workers [~/dreamix_jax]
#   PYTHON    interpreter on the workers [python3]
#   DETACH    1: start the runs in the background with nohup, so they outlive this ssh session [0]
#   UPLOAD    "LOCAL_DIR gs://DEST": once the program has succeeded, copy LOCAL_DIR (relative to
#             REPO_DIR on the worker) to DEST with `gcloud storage rsync`; finetune.sh sets it when
#             its workdir is local (sample.sh and sweep.sh write theirs in the bucket) [none]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if (( $# < 1 )); then
  echo "usage: $(basename "$0") MODULE [ARGS...]   e.g. dreamix_jax.train --config ..." >&2
  exit 2
fi

# Matches the command line of a `<...>python<version> -m dreamix_jax...` process, but not the
# workers' shell running this very command (that line starts with the shell), which a plain
# 'python -m dreamix_jax' pattern would kill before it starts anything.
pattern='^[^ ]*python[0-9.]* -m dreamix_jax'
# A stopped run's libtpu holds the chips until its process has exited: wait for that (30 s at
# most, then kill -9), or the new run fails to open the TPU.
stop="pkill -f '$pattern' || true
for _ in \$(seq 30); do pgrep -f '$pattern' > /dev/null || break; sleep 1; done
pkill -9 -f '$pattern' || true"

# %q quotes every argument for the workers' shell, so prompts with spaces or quotes arrive intact.
program="$(printf '%q ' "$PYTHON" -m "$@")"
if [[ -n ${UPLOAD:-} ]]; then
  read -r upload_dir upload_to extra <<< "$UPLOAD"
  [[ -n ${upload_to:-} && -z ${extra:-} && $upload_to == gs://* ]] \
    || die "UPLOAD must be 'LOCAL_DIR gs://DEST', got '$UPLOAD'"
  # One bash -c line, so that the upload follows the program under nohup as well.
  program="bash -c $(printf '%q' "$program&& gcloud storage rsync --recursive $(printf '%q %q' "$upload_dir" "$upload_to")") "
fi
python_cmd="$program> logs/worker-\$(hostname).log 2>&1"
if [[ ${DETACH:-0} == 1 ]]; then
  python_cmd="nohup $python_cmd < /dev/null &"
fi

tpu_ssh_all "$stop
cd $(remote_repo_dir) && mkdir -p logs && $python_cmd"
