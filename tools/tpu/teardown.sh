#!/usr/bin/env bash
# Delete the TPU VM (or queued resource and its TPU) made by tools/tpu/launch.sh.
# The GCS workdir is kept. Run with --help for the options.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tools/tpu/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'EOF'
Usage: tools/tpu/teardown.sh --name NAME --zone ZONE [--queued] [--project P] [--dry-run]

Deletes TPU VM NAME (gcloud compute tpus tpu-vm delete), or with --queued the queued resource
NAME together with its TPU VM (gcloud compute tpus queued-resources delete --force).
Checkpoints and metrics in the gs:// workdir are not touched.

  --name NAME        TPU VM name / queued-resource id
  --zone ZONE        its zone
  --queued           NAME is a queued resource
  --project PROJECT  gcloud project (default: gcloud's configured project)
  --dry-run          print the gcloud command instead of running it
  -h, --help         this help
EOF
}

NAME="" ZONE="" PROJECT="" QUEUED=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) [[ $# -ge 2 ]] || die "--name needs a value"; NAME="$2"; shift 2 ;;
    --zone) [[ $# -ge 2 ]] || die "--zone needs a value"; ZONE="$2"; shift 2 ;;
    --project) [[ $# -ge 2 ]] || die "--project needs a value"; PROJECT="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n "$NAME" ]] || die "--name is required (see --help)"
[[ -n "$ZONE" ]] || die "--zone is required (see --help)"

PFLAGS=()
if [[ -n "$PROJECT" ]]; then
  PFLAGS=("--project=$PROJECT")
fi

if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet \
    "${PFLAGS[@]}"
else
  run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet "${PFLAGS[@]}"
fi
