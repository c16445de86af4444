#!/usr/bin/env bash
# Deletes a TPU VM, without asking. Its disks go with it; the workdir on GCS stays.
#
# Usage: launch/tpu_delete.sh NAME [--zone=Z] [--project=P] [--dry-run]
#
# Runs: gcloud compute tpus tpu-vm delete NAME --quiet --zone=$ZONE [--project=$PROJECT]
# Env: ZONE, PROJECT, DRY_RUN=1; see launch/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require_name

gcloud_tpu delete "$NAME" --quiet "${EXTRA[@]}"
