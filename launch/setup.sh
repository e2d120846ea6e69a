#!/usr/bin/env bash
# Copies this repository to every worker of $TPU_NAME and installs it there with JAX for TPU.
# Run it again after changing the code: it replaces the workers' copy (the previous one, with its
# logs/, is kept as $REPO_DIR.old).
#
# Usage:
#   TPU_NAME=my-tpu launch/setup.sh
#
# Environment (defaults in brackets; see common.sh):
#   TPU_NAME  required
#   ZONE      [us-west4-a]
#   PROJECT   passed as --project only when set [gcloud's default]
#   REPO_DIR  the copy's directory on the workers [~/dreamix_jax]
#   PYTHON    interpreter whose pip installs the project [python3]; the project needs
#             Python >= 3.11, so on images with an older python3 point this at a newer one
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# jax[tpu] must match the pinned jax, or pip would replace the pin; read it rather than repeat it.
jax_version=$(sed -n 's/^jax==\([^[:space:]#]*\).*/\1/p' "$repo_root/requirements.txt")
[[ -n $jax_version ]] || die "no 'jax==' line in $repo_root/requirements.txt"

dir=$(remote_repo_dir)
# `scp --recurse` into an existing directory would nest the copy inside it; move the old one aside.
tpu_ssh_all "if [ -e $dir ]; then rm -rf $dir.old && mv $dir $dir.old; fi"
gcloud compute tpus tpu-vm scp --recurse "$repo_root" "$TPU_NAME":"$REPO_DIR" "${GCLOUD_FLAGS[@]}" --worker=all
tpu_ssh_all "cd $dir && $(printf '%q' "$PYTHON") -m pip install -r requirements.txt -e . 'jax[tpu]==$jax_version'"
