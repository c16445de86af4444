#!/usr/bin/env bash
# Streams the log of the run started by launch/tpu_run.sh (Ctrl-C stops watching, not the run).
#
# Usage: launch/tpu_logs.sh NAME [WORKER] [--zone=Z] [--project=P] [--dry-run]
#
# WORKER: a worker index (default 0, the host that logs for the whole job) or `all`
# (every worker's log, interleaved). Runs on it: tail -n $TAIL_LINES -F ~/research_run.log
# (-F keeps following when a new tpu_run.sh replaces the log). TAIL_LINES default 100.
# Env: ZONE, PROJECT, WORKER, TAIL_LINES, DRY_RUN=1; see launch/common.sh.
set -euo pipefail
: "${WORKER:=0}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${TAIL_LINES:=100}"
parse_args "$@"
require_name
if ((${#POSITIONAL[@]} >= 2)); then WORKER=${POSITIONAL[1]}; fi
[[ $TAIL_LINES =~ ^[0-9]+$ ]] || die_usage "TAIL_LINES must be a number"

tpu_ssh "$NAME" "tail -n $TAIL_LINES -F $RUN_LOG"
