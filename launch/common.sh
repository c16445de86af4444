# shellcheck shell=bash
# Shared defaults, argument parsing and the `gcloud_tpu` wrapper for launch/tpu_*.sh.
# Sourced, never run. Every setting is an env var, and most are also a flag:
#
#   ZONE              --zone=Z              default us-central2-b (where v4 TPUs live)
#   PROJECT           --project=P           default: gcloud's configured project
#   ACCELERATOR_TYPE  --accelerator-type=T  default v4-32
#   RUNTIME_VERSION   --version=V           default tpu-ubuntu2204-base
#   WORKER            --worker=W            default all (tpu_logs.sh: 0)
#   REPO_DIR          --repo-dir=D          local checkout to copy; default: this repo
#   REMOTE_DIR        checkout on each worker, default ~/research (no spaces)
#   VENV              venv on each worker, default ~/venv (no spaces)
#   GCLOUD_FLAGS      extra flags for every gcloud call, e.g. "--tunnel-through-iap"
#   GCLOUD            the gcloud executable, default gcloud
#   DRY_RUN=1         --dry-run             print the gcloud commands, run nothing

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${ZONE:=us-central2-b}"
: "${PROJECT:=}"
: "${ACCELERATOR_TYPE:=v4-32}"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${WORKER:=all}"
: "${REPO_DIR:=$(dirname "$LAUNCH_DIR")}"
: "${REMOTE_DIR:=~/research}"  # inside double quotes: the ~ stays literal, for the worker
: "${VENV:=~/venv}"
: "${GCLOUD_FLAGS:=}"
: "${GCLOUD:=gcloud}"
: "${DRY_RUN:=0}"
: "${SPOT:=0}"
: "${PREEMPTIBLE:=0}"
RUN_LOG='~/research_run.log'
RUN_PID='~/research_run.pid'
# Remote test: the recorded pid is alive and still research.main (not a recycled pid).
RUN_ALIVE="{ [ -s $RUN_PID ] && grep -qa research.main /proc/\$(cat $RUN_PID)/cmdline 2>/dev/null; }"
POSITIONAL=()
EXTRA=()

# Prints the calling script's header comment (line 2 up to the first non-comment line).
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

die_usage() {
  echo "error: $1" >&2
  usage | grep -m1 '^Usage:' >&2
  echo "Run '$0 --help' for details." >&2
  exit 2
}

_opt_var() {
  case $1 in
    --zone) echo ZONE ;;
    --project) echo PROJECT ;;
    --accelerator-type) echo ACCELERATOR_TYPE ;;
    --version) echo RUNTIME_VERSION ;;
    --worker) echo WORKER ;;
    --repo-dir) echo REPO_DIR ;;
    *) return 1 ;;
  esac
}

# Fills POSITIONAL (plain arguments) and EXTRA (everything after `--`).
parse_args() {
  local var
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --preemptible) PREEMPTIBLE=1 ;;
      --) shift; EXTRA=("$@"); return 0 ;;
      --*=*)
        var=$(_opt_var "${1%%=*}") || die_usage "unknown option: $1"
        printf -v "$var" '%s' "${1#*=}" ;;
      -*)
        var=$(_opt_var "$1") || die_usage "unknown option: $1"
        (($# >= 2)) || die_usage "$1 needs a value"
        printf -v "$var" '%s' "$2"
        shift ;;
      *) POSITIONAL+=("$1") ;;
    esac
    shift
  done
  REMOTE_DIR=${REMOTE_DIR%/}
  local p
  for p in "$REMOTE_DIR" "$VENV"; do
    [[ $p =~ ^[~A-Za-z0-9._/-]+$ ]] || die_usage "REMOTE_DIR/VENV must be plain paths, got '$p'"
  done
}

# sq ARG: ARG quoted for any POSIX shell ('...'), left bare when it is plainly safe.
# Used for what goes into remote command lines, so `:runlocal`, `gs://`, spaces,
# quotes and `$` reach research.main unchanged whatever the worker's login shell.
sq() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; return; fi
  local r=${1//\'/\'\\\'\'}
  printf "'%s'" "$r"
}

# sq_args ARGS...: every ARG through sq, space separated, on one line.
sq_args() {
  local a sep=''
  for a in "$@"; do printf '%s' "$sep"; sq "$a"; sep=' '; done
}

# Prints a command, shell-quoted, on one line (DRY_RUN output is copy-pasteable).
print_cmd() { sq_args "$@"; echo; }

# gcloud_tpu SUBCOMMAND ARGS...  ->  gcloud compute tpus tpu-vm SUBCOMMAND ARGS... --zone=.. [--project=..]
gcloud_tpu() {
  local cmd=("$GCLOUD" compute tpus tpu-vm "$@" "--zone=$ZONE")
  if [[ -n $PROJECT ]]; then cmd+=("--project=$PROJECT"); fi
  # shellcheck disable=SC2206  # GCLOUD_FLAGS is meant to be word-split
  if [[ -n $GCLOUD_FLAGS ]]; then cmd+=($GCLOUD_FLAGS); fi
  if [[ $DRY_RUN == 1 ]]; then print_cmd "${cmd[@]}"; return 0; fi
  "${cmd[@]}"
}

# tpu_ssh NAME REMOTE_COMMAND: runs REMOTE_COMMAND (a bash command line) on $WORKER.
tpu_ssh() { gcloud_tpu ssh "$1" "--worker=$WORKER" --command "$2"; }

# Takes the TPU name from POSITIONAL[0] or dies with the usage line.
require_name() {
  ((${#POSITIONAL[@]} >= 1)) || die_usage "missing TPU NAME"
  NAME=${POSITIONAL[0]}
}
