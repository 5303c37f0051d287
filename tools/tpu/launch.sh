#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or pod slice): create it (or a queued resource), install
# this project on every worker, run the trainer on all workers with the workdir in GCS, stream
# the logs, and relaunch when the TPU is preempted (training resumes from the last checkpoint
# in the GCS workdir). The first launch of a workdir records the code revision and the library
# versions it installed; every later launch of that workdir installs exactly those.
# Run with --help for the options; --dry-run prints the gcloud commands.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=tools/tpu/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'EOF'
Usage: tools/tpu/launch.sh --name NAME --zone ZONE --workdir gs://BUCKET/PATH [options]
                           [-- --config.KEY=VALUE ...]

Creates TPU VM NAME (or queued resource NAME with --queued), installs the project on all
workers, runs on all workers (--worker=all)
  python3 -m synthclip_jax.main --config=CONFIG --workdir=gs://BUCKET/PATH [--config.KEY=VALUE ...]
streaming their output, and, if the TPU is preempted, deletes it, creates it again, reinstalls
and reruns the same command, which resumes from the latest checkpoint in the GCS workdir.

Pinning: the first launch of a workdir records the commit it installed and the library
versions worker 0 ended up with (`pip freeze`) in the state directory; every relaunch (and a
later run of this script for the same workdir) installs that commit with those versions
(`git checkout REV` / `git archive REV`, `pip install -c constraints.txt`), so a week-long run
keeps its code and can always restore its own Grain/orbax state.

Required:
  --name NAME              TPU VM name (also the queued-resource id with --queued)
  --zone ZONE              e.g. us-central2-b
  --workdir gs://B/P       training workdir; must be in GCS (workers' disks go with the VM)

Options:
  --project PROJECT        gcloud project (default: gcloud's configured project)
  --accelerator-type T     e.g. v4-8, v4-32, v5litepod-16 (default: v4-8)
  --version V              TPU software (runtime) version (default: tpu-ubuntu2204-base)
  --config FILE            trainer config, relative to the repo (default: configs/vitb16_synthci30m.py)
  --queued                 create a queued resource (gcloud compute tpus queued-resources)
  --spot                   Spot TPU (both modes): cheap, may be preempted at any time
  --preemptible            preemptible TPU VM (legacy; not with --queued)
  --repo URL [--ref REF]   install by `git clone URL` (+ checkout REF) on every worker;
                           default: `git archive HEAD` of this checkout, copied to every worker
  --state-dir DIR          where the pins of this workdir live (default:
                           ${XDG_STATE_HOME:-~/.local/state}/synthclip_jax/tpu/<workdir>)
  --repin                  forget the pins: install the current revision and the newest
                           allowed libraries, and record those (a deliberate upgrade)
  --max-relaunches N       give up after N relaunches on preemption (default: 20)
  --poll-seconds S         state polling interval while waiting for the TPU (default: 30)
  --delete-when-done       delete the TPU (and queued resource) after training finishes
  --skip-create            use an existing TPU VM NAME (still relaunches on preemption)
  --skip-install           the project is already installed on the workers
  --no-preflight           skip the pre-flight: by default the train step is first compiled
                           here for --accelerator-type (python -m synthclip_jax.main
                           --mode=compile, needs `pip install -e '.[aot]'`), and nothing is
                           created when it does not fit (the compiler's one line says why)
  --dry-run                print the gcloud commands instead of running them, assuming the
                           TPU becomes READY and training succeeds
  -h, --help               this help

Everything after `--` is passed to the trainer (e.g. --config.batch_size=4096).
Delete the TPU afterwards with tools/tpu/teardown.sh --name NAME --zone ZONE [--queued].
EOF
}

NAME="" ZONE="" PROJECT="" WORKDIR="" ACCEL="v4-8" VERSION="tpu-ubuntu2204-base"
CONFIG="configs/vitb16_synthci30m.py" QUEUED=0 SPOT=0 PREEMPTIBLE=0 REPO="" REF="" MAX_RELAUNCHES=20
POLL=30 DELETE_WHEN_DONE=0 SKIP_CREATE=0 SKIP_INSTALL=0 STATE_DIR="" REPIN=0 PREFLIGHT=1
TRAIN_ARGS=()

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --accelerator-type) need_value "$@"; ACCEL="$2"; shift 2 ;;
    --version) need_value "$@"; VERSION="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --repo) need_value "$@"; REPO="$2"; shift 2 ;;
    --ref) need_value "$@"; REF="$2"; shift 2 ;;
    --max-relaunches) need_value "$@"; MAX_RELAUNCHES="$2"; shift 2 ;;
    --poll-seconds) need_value "$@"; POLL="$2"; shift 2 ;;
    --state-dir) need_value "$@"; STATE_DIR="$2"; shift 2 ;;
    --repin) REPIN=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --delete-when-done) DELETE_WHEN_DONE=1; shift ;;
    --skip-create) SKIP_CREATE=1; shift ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --no-preflight) PREFLIGHT=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required (see --help)"
[[ -n "$ZONE" ]] || die "--zone is required (see --help)"
[[ -n "$WORKDIR" ]] || die "--workdir gs://BUCKET/PATH is required (see --help)"
[[ "$WORKDIR" == gs://?* ]] || die "--workdir must be a gs:// path (got $WORKDIR): every worker \
must see the same workdir, and it must outlive a preempted TPU"
[[ "$MAX_RELAUNCHES" =~ ^[0-9]+$ ]] || die "--max-relaunches must be a number"
[[ "$POLL" =~ ^[0-9]+$ ]] || die "--poll-seconds must be a number"
if [[ "$SPOT" == 1 && "$PREEMPTIBLE" == 1 ]]; then
  die "choose one of --spot and --preemptible"
fi
if [[ "$QUEUED" == 1 && "$PREEMPTIBLE" == 1 ]]; then
  die "--preemptible is for TPU VMs; queued resources take --spot"
fi
if [[ "$QUEUED" == 1 && "$SKIP_CREATE" == 1 ]]; then
  die "--skip-create is for an existing TPU VM, not with --queued"
fi
[[ -n "$REF" && -z "$REPO" ]] && die "--ref needs --repo"

PFLAGS=()
[[ -n "$PROJECT" ]] && PFLAGS=("--project=$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)
SSH_FLAGS=("--ssh-flag=-oServerAliveInterval=30" "--ssh-flag=-oServerAliveCountMax=6")
REMOTE_DIR="synthclip_jax"  # relative to the worker user's home directory
TARBALL="synthclip_jax.tar.gz"
REMOTE_CONSTRAINTS="synthclip_jax-constraints.txt"  # in the home directory, beside REMOTE_DIR
# One state directory per workdir (gs://b/runs/r1 -> b_runs_r1): the workdir is the run.
workdir_key="${WORKDIR#gs://}"
STATE_DIR="${STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/synthclip_jax/tpu/${workdir_key//\//_}}"
PIN_REVISION="$STATE_DIR/revision"
PIN_CONSTRAINTS="$STATE_DIR/constraints.txt"
SHIPPED_REVISION=""  # the commit `git archive` copied to the workers (they have no .git)

create() {
  local spot=()
  [[ "$SPOT" == 1 ]] && spot=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    run "${QR[@]}" create "$NAME" --node-id="$NAME" --zone="$ZONE" \
      --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${spot[@]}" "${PFLAGS[@]}"
  else
    [[ "$PREEMPTIBLE" == 1 ]] && spot=(--preemptible)
    run "${TPU[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$ACCEL" \
      --version="$VERSION" "${spot[@]}" "${PFLAGS[@]}"
  fi
}

delete() {
  if [[ "$QUEUED" == 1 ]]; then  # --force also deletes the TPU VM the request created
    run "${QR[@]}" delete "$NAME" --zone="$ZONE" --force --quiet "${PFLAGS[@]}"
  else
    run "${TPU[@]}" delete "$NAME" --zone="$ZONE" --quiet "${PFLAGS[@]}"
  fi
}

# The TPU VM's state (READY, CREATING, PREEMPTED, TERMINATED, ...), or NOT_FOUND.
vm_state() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show "${TPU[@]}" describe "$NAME" --zone="$ZONE" --format='value(state)' "${PFLAGS[@]}" >&2
    echo READY
    return
  fi
  "${TPU[@]}" describe "$NAME" --zone="$ZONE" --format='value(state)' "${PFLAGS[@]}" \
    2>/dev/null || echo NOT_FOUND
}

# The queued resource's state (ACCEPTED, PROVISIONING, WAITING_FOR_RESOURCES, ACTIVE,
# SUSPENDING, SUSPENDED, FAILED, ...), or NOT_FOUND.
qr_state() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show "${QR[@]}" describe "$NAME" --zone="$ZONE" --format='value(state.state)' \
      "${PFLAGS[@]}" >&2
    echo ACTIVE
    return
  fi
  "${QR[@]}" describe "$NAME" --zone="$ZONE" --format='value(state.state)' "${PFLAGS[@]}" \
    2>/dev/null || echo NOT_FOUND
}

# "ready", "wait", or "gone" (preempted, failed, deleted: needs delete + create).
health() {
  local state
  if [[ "$QUEUED" == 1 ]]; then
    state="$(qr_state)"
    case "$state" in
      ACTIVE) ;;  # the node exists; its own state decides below
      ACCEPTED|PROVISIONING|WAITING_FOR_RESOURCES|CREATING) echo wait; return ;;
      *) echo gone; return ;;  # SUSPENDING, SUSPENDED, FAILED, DELETING, NOT_FOUND
    esac
  fi
  state="$(vm_state)"
  case "$state" in
    READY) echo ready ;;
    CREATING|STARTING|RESTARTING|REPAIRING) echo wait ;;
    *) echo gone ;;  # PREEMPTED, TERMINATED, STOPPED, DELETING, NOT_FOUND, ...
  esac
}

wait_ready() {
  local h
  while true; do
    h="$(health)"
    case "$h" in
      ready) return 0 ;;
      gone) return 1 ;;
      *) echo "waiting for $NAME to be READY ..." >&2; sleep "$POLL" ;;
    esac
  done
}

# Makes sure the TPU exists and is READY, (re)creating it when it is missing or preempted.
provision() {
  if [[ "$DRY_RUN" == 1 ]]; then
    [[ "$SKIP_CREATE" == 1 ]] || create
    wait_ready
    return
  fi
  local h
  h="$(health)"
  if [[ "$h" == gone ]]; then
    if [[ "$QUEUED" == 1 && "$(qr_state)" != NOT_FOUND ]]; then
      delete
    elif [[ "$QUEUED" == 0 && "$(vm_state)" != NOT_FOUND ]]; then
      delete
    fi
    create
  fi
  wait_ready || die "$NAME did not become READY (state: $(health))"
}

pinned() {
  [[ "$REPIN" == 0 && -s "$PIN_REVISION" && -s "$PIN_CONSTRAINTS" ]]
}

# The commit of this checkout that `git archive` ships (HEAD; committed files only).
local_revision() {
  git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null && return
  [[ "$DRY_RUN" == 1 ]] && { echo HEAD; return; }
  die "$REPO_ROOT is not a git checkout: use --repo URL"
}

# After the first install: the commit the workers have and worker 0's `pip freeze`, kept as
# the pins of this workdir. Only `name==version` lines: pip refuses links as constraints.
record_pins() {
  local revision="$1" cmd="python3 -m pip freeze --exclude-editable" out
  [[ -n "$REPO" ]] && cmd="git -C $REMOTE_DIR rev-parse HEAD && $cmd"
  local ssh0=("${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=0 "${PFLAGS[@]}" "${SSH_FLAGS[@]}"
              --command="$cmd")
  if [[ "$DRY_RUN" == 1 ]]; then  # a query, like the state polls: shown on stderr
    show "${ssh0[@]}" >&2
    return
  fi
  out="$("${ssh0[@]}")" || die "could not read the installed revision and versions on worker 0"
  if [[ -n "$REPO" ]]; then
    revision="$(grep -m1 -E '^[0-9a-f]{40}$' <<<"$out")" || die "no git revision from worker 0"
  fi
  mkdir -p "$STATE_DIR"
  grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' <<<"$out" >"$PIN_CONSTRAINTS.tmp" \
    || die "no library versions from worker 0's pip freeze"
  printf '%s\n' "$revision" >"$PIN_REVISION.tmp"
  mv "$PIN_CONSTRAINTS.tmp" "$PIN_CONSTRAINTS"
  mv "$PIN_REVISION.tmp" "$PIN_REVISION"
  REPIN=0
  echo "pinned $WORKDIR to revision $revision and $(wc -l <"$PIN_CONSTRAINTS") library versions" \
    "($STATE_DIR): relaunches install exactly these" >&2
}

install() {
  local setup revision="" constraints=""
  if pinned; then
    revision="$(<"$PIN_REVISION")"
    echo "installing the pins of $WORKDIR: revision $revision, versions of $PIN_CONSTRAINTS" \
      "(--repin replaces them)" >&2
    run "${TPU[@]}" scp "$PIN_CONSTRAINTS" "$NAME:$REMOTE_CONSTRAINTS" --zone="$ZONE" \
      --worker=all "${PFLAGS[@]}"
    constraints=" -c ../$REMOTE_CONSTRAINTS"
  fi
  setup="python3 -m pip install --upgrade --quiet pip && python3 -m pip install --quiet"
  setup+="$constraints -r requirements.txt 'jax[tpu]>=0.10,<0.11' gcsfs google-cloud-storage"
  if [[ -n "$REPO" ]]; then
    local checkout="" ref="${revision:-$REF}"
    [[ -n "$ref" ]] && checkout=" && git -C $REMOTE_DIR checkout --quiet $(quote "$ref")"
    run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all "${PFLAGS[@]}" "${SSH_FLAGS[@]}" \
      --command="set -e; rm -rf $REMOTE_DIR && git clone --quiet $(quote "$REPO") \
$REMOTE_DIR$checkout && cd $REMOTE_DIR && $setup"
  else
    local local_tar="${TMPDIR:-/tmp}/$NAME-$TARBALL"
    [[ -n "$revision" ]] || revision="$(local_revision)"
    SHIPPED_REVISION="$revision"
    run git -C "$REPO_ROOT" archive --format=tar.gz --output="$local_tar" "$revision"
    run "${TPU[@]}" scp "$local_tar" "$NAME:$TARBALL" --zone="$ZONE" --worker=all \
      "${PFLAGS[@]}"
    run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all "${PFLAGS[@]}" "${SSH_FLAGS[@]}" \
      --command="set -e; rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $TARBALL \
-C $REMOTE_DIR && cd $REMOTE_DIR && $setup"
  fi
  pinned || record_pins "$revision"
}

# The trainer on every worker, in the foreground: its output (all workers) streams here and is
# also appended to ~/synthclip_jax/train.log on each worker. SIGTERM from a preemption makes
# the trainer checkpoint (to GCS) and exit.
train() {
  local cmd arg
  cmd="cd $REMOTE_DIR && set -o pipefail && SYNTHCLIP_DISTRIBUTED=1"
  # provenance.json's git revision, for an archive (no .git on the workers).
  [[ -n "$SHIPPED_REVISION" ]] && cmd+=" SYNTHCLIP_SOURCE_REVISION=$(quote "$SHIPPED_REVISION")"
  cmd+=" python3 -m synthclip_jax.main"
  cmd+=" --config=$(quote "$CONFIG") --workdir=$(quote "$WORKDIR")"
  for arg in "${TRAIN_ARGS[@]}"; do
    cmd+=" $(quote "$arg")"
  done
  cmd+=" 2>&1 | tee -a train.log"
  run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all "${PFLAGS[@]}" "${SSH_FLAGS[@]}" \
    --command="$cmd"
}

# Before anything is created: compile the exact train step for the accelerator on this host
# (synthclip_jax/aot/) and stop if it would not fit. The compiler prints its report and, when
# the step does not fit, one line naming the per-device batch and what would help.
preflight() {
  local report="${TMPDIR:-/tmp}/$NAME-compile_report.json" status=0
  local cmd=("${PYTHON:-python3}" -m synthclip_jax.main --mode=compile "--config=$CONFIG"
             "--config.compile.target=$ACCEL" "--config.compile.out=$report" "${TRAIN_ARGS[@]}")
  if [[ "$DRY_RUN" == 1 ]]; then
    show "${cmd[@]}"
    return
  fi
  echo "pre-flight: compiling the train step for $ACCEL on this host (--no-preflight skips)" >&2
  (cd "$REPO_ROOT" && "${cmd[@]}") || status=$?
  case "$status" in
    0) echo "pre-flight: it fits ($report)" >&2 ;;
    1) die "pre-flight: the train step does not fit on $ACCEL (the line above says what would \
help); nothing was created" ;;
    3) die "pre-flight needs the compilers here: pip install -e '.[aot]' (or --no-preflight)" ;;
    *) die "pre-flight compile failed (status $status); nothing was created (--no-preflight \
skips it)" ;;
  esac
}

[[ "$PREFLIGHT" == 1 ]] && preflight

relaunches=0
while true; do
  provision
  [[ "$SKIP_INSTALL" == 1 ]] || install
  if train; then
    echo "training finished; workdir $WORKDIR" >&2
    break
  fi
  h="$(health)"
  if [[ "$h" == ready ]]; then
    die "training failed on a healthy TPU (not a preemption); see the output above and \
train.log on the workers; rerun this script to resume from the last checkpoint"
  fi
  relaunches=$((relaunches + 1))
  if [[ "$relaunches" -gt "$MAX_RELAUNCHES" ]]; then
    die "TPU lost $relaunches times (limit --max-relaunches=$MAX_RELAUNCHES); giving up"
  fi
  echo "TPU $NAME lost (preempted?); relaunch $relaunches of at most $MAX_RELAUNCHES" >&2
  SKIP_CREATE=0
done

if [[ "$DELETE_WHEN_DONE" == 1 ]]; then
  delete
fi
