#!/usr/bin/env bash
# Starts `python -m research.main ARGS` on every worker, in the background (survives ssh
# disconnects). Every worker runs the same command; research.main joins them into one job.
#
# Usage: launch/tpu_run.sh NAME [--zone=Z] [--project=P] [--dry-run] -- ARGS...
#
# On each worker, from $REMOTE_DIR (~/research) with $VENV (~/venv) active:
#   RESEARCH_DISTRIBUTED=1 [TFDS_DATA_DIR=..] nohup python -m research.main ARGS \
#       > ~/research_run.log 2>&1 & echo $! > ~/research_run.pid
# The previous log is kept as ~/research_run.log.prev. Refuses to start while the recorded
# pid is still running (stop it first with launch/tpu_stop.sh).
# ARGS are quoted for the remote shell, so `--config=experiments/x.py:runlocal`, gs:// paths
# and spaces arrive unchanged. Env passed on when set (non-empty) locally: TFDS_DATA_DIR, and the
# variables named in PASS_ENV (space separated). RESEARCH_DISTRIBUTED (default 1).
#
# Example: launch/tpu_run.sh my-pod -- --config=experiments/ddpm_cifar10.py \
#            --workdir=gs://my-bucket/runs/ddpm1 --config.data.data_dir=gs://my-bucket/tfds
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${PASS_ENV:=}"
: "${RESEARCH_DISTRIBUTED:=1}"
parse_args "$@"
require_name
((${#EXTRA[@]})) || die_usage "nothing to run: give research.main's arguments after --"

env_prefix="RESEARCH_DISTRIBUTED=$(sq "$RESEARCH_DISTRIBUTED")"
for var in TFDS_DATA_DIR $PASS_ENV; do
  [[ $var =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die_usage "PASS_ENV: bad variable name '$var'"
  if [[ -n ${!var:-} ]]; then env_prefix+=" $var=$(sq "${!var}")"; fi
done

# `cd ... || exit` first, so that `&` backgrounds python alone and $! is its pid.
remote="cd $REMOTE_DIR && . $VENV/bin/activate || exit 1
if $RUN_ALIVE; then echo \"\$(hostname): already running (pid \$(cat $RUN_PID)); stop it first\" >&2; exit 1; fi
if [ -f $RUN_LOG ]; then mv -f $RUN_LOG $RUN_LOG.prev; fi
$env_prefix nohup python -m research.main $(sq_args "${EXTRA[@]}") > $RUN_LOG 2>&1 < /dev/null &
echo \$! > $RUN_PID
echo \"\$(hostname): started pid \$(cat $RUN_PID), log in $RUN_LOG\""
tpu_ssh "$NAME" "$remote"
