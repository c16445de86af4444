#!/usr/bin/env bash
# Puts the code on every worker of a TPU VM and installs it. Safe to re-run after code changes.
#
# Usage: launch/tpu_setup.sh NAME [--zone=Z] [--project=P] [--repo-dir=D] [--dry-run]
#
# 1. Code: copies the local checkout (REPO_DIR, default this repo) to $REMOTE_DIR (~/research)
#    on every worker: gcloud compute tpus tpu-vm scp --recurse ... --worker=all. Only files
#    git would commit are sent (tracked + untracked-not-ignored): no .git, venvs or workdirs.
#    With REPO_URL set, each worker instead clones REPO_URL (or fetches, if already cloned)
#    and checks out REPO_REF when that is set.
# 2. Env: on every worker, creates $VENV (~/venv) if missing, then
#      pip install -U $JAX_TPU_SPEC -f $LIBTPU_INDEX    (JAX_TPU_SPEC default 'jax[tpu]')
#      pip install -r requirements-tpu.txt
#      pip install -e .
# Env: ZONE, PROJECT, REPO_DIR, REPO_URL, REPO_REF, REMOTE_DIR, VENV, JAX_TPU_SPEC, DRY_RUN=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${REPO_URL:=}"
: "${REPO_REF:=}"
: "${JAX_TPU_SPEC:=jax[tpu]}"
: "${LIBTPU_INDEX:=https://storage.googleapis.com/jax-releases/libtpu_releases.html}"
parse_args "$@"
require_name

base=${REMOTE_DIR##*/}
if [[ -z $REPO_URL ]]; then
  # Stage a clean copy named like the remote dir and copy it into the remote dir's parent
  # (`scp -r src host:dest` would nest src inside dest once dest exists, i.e. on a re-run).
  [[ -d $REPO_DIR ]] || die_usage "REPO_DIR '$REPO_DIR' is not a directory"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir "$stage/$base"
  if git -C "$REPO_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO_DIR" && git ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done \
      | tar --null -T - -cf -) | tar -xf - -C "$stage/$base"
  else
    cp -a "$REPO_DIR/." "$stage/$base/"
  fi
  parent=${REMOTE_DIR%"$base"}  # "~/" -> "" (scp paths are relative to the home dir)
  gcloud_tpu scp --recurse "$stage/$base" "$NAME:${parent#\~/}" "--worker=$WORKER"
  code_step="cd $REMOTE_DIR"
else
  ref_step="git pull --ff-only"
  if [[ -n $REPO_REF ]]; then
    ref_step="git checkout $(sq "$REPO_REF") && { ! git symbolic-ref -q HEAD >/dev/null || git pull --ff-only; }"
  fi
  code_step="{ [ -d $REMOTE_DIR/.git ] || git clone $(sq "$REPO_URL") $REMOTE_DIR; } && cd $REMOTE_DIR && git fetch --quiet origin && $ref_step"
fi

venv_step="if [ ! -x $VENV/bin/pip ]; then rm -rf $VENV; python3 -m venv $VENV 2>/dev/null || { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && rm -rf $VENV && python3 -m venv $VENV; }; fi"
install_step=". $VENV/bin/activate && pip install -q -U pip && pip install -U $(sq "$JAX_TPU_SPEC") -f $(sq "$LIBTPU_INDEX") && pip install -r requirements-tpu.txt && pip install -e ."
tpu_ssh "$NAME" "$code_step && $venv_step && $install_step && echo \"setup done on \$(hostname)\""
