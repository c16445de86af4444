#!/usr/bin/env bash
# Creates a TPU VM (a single host or a pod slice).
#
# Usage: launch/tpu_create.sh NAME [--zone=Z] [--project=P] [--accelerator-type=T]
#                              [--version=V] [--spot|--preemptible] [--dry-run] [-- GCLOUD_ARGS...]
#
# Runs: gcloud compute tpus tpu-vm create NAME --accelerator-type=$ACCELERATOR_TYPE
#         --version=$RUNTIME_VERSION [--spot] --zone=$ZONE [--project=$PROJECT]
# Env: ZONE (us-central2-b), PROJECT, ACCELERATOR_TYPE (v4-32), RUNTIME_VERSION
# (tpu-ubuntu2204-base), SPOT=1, PREEMPTIBLE=1, DRY_RUN=1; see launch/common.sh.
# Spot/preemptible VMs are cheap but can be reclaimed at any time: see launch/README.md.
# Anything after `--` goes to gcloud unchanged (e.g. -- --network=my-net).
#
# Example: launch/tpu_create.sh my-pod --zone=us-central2-b --accelerator-type=v4-32 --spot
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require_name

args=(create "$NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
if [[ $SPOT == 1 ]]; then args+=(--spot); fi
if [[ $PREEMPTIBLE == 1 ]]; then args+=(--preemptible); fi
gcloud_tpu "${args[@]}" "${EXTRA[@]}"
