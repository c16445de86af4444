#!/usr/bin/env bash
# Stops the run started by launch/tpu_run.sh on every worker, by its recorded pid.
#
# Usage: launch/tpu_stop.sh NAME [--zone=Z] [--project=P] [--worker=W] [--dry-run]
#
# On each worker: kill -TERM $(cat ~/research_run.pid), if that pid is still research.main,
# then waits up to STOP_TIMEOUT seconds (default 300) for it to exit. SIGTERM lets the
# trainer save a checkpoint and exit cleanly; re-running tpu_run.sh resumes from it.
# Only that pid is signalled: never `killall python`.
# Env: ZONE, PROJECT, WORKER (all), STOP_TIMEOUT, DRY_RUN=1; see launch/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${STOP_TIMEOUT:=300}"
parse_args "$@"
require_name
[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || die_usage "STOP_TIMEOUT must be a number of seconds"

remote="if ! $RUN_ALIVE; then echo \"\$(hostname): no run going\"; rm -f $RUN_PID; exit 0; fi
pid=\$(cat $RUN_PID); alive() { grep -qsa research.main /proc/\$pid/cmdline; }
kill -TERM \$(cat $RUN_PID)
echo \"\$(hostname): sent SIGTERM to \$pid, waiting up to ${STOP_TIMEOUT}s\"
i=0; while alive && [ \$i -lt $STOP_TIMEOUT ]; do sleep 1; i=\$((i+1)); done
if alive; then echo \"\$(hostname): \$pid still running after ${STOP_TIMEOUT}s\" >&2; exit 1; fi
rm -f $RUN_PID; echo \"\$(hostname): stopped\""
tpu_ssh "$NAME" "$remote"
