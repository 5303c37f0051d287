#!/usr/bin/env bash
# The one-shot accelerator check (GPU/TPU): run from the repository root on the device machine.
#
#   bash tools/bench/device_check.sh            # full check, < 8 minutes on an H200
#   bash tools/bench/device_check.sh --smoke    # the same code at tiny size on CPU (a test)
#
# Writes $OUT/device_check.json after each part (OUT defaults to ./device_check_out) and prints
# one `PART name {...}` line per part; see tools/bench/device_check.py for the parts. Wheels the
# machine lacks are installed offline from .whl/ (tools/bench/fetch_device_wheels.sh fills it)
# into a private folder on PYTHONPATH. On a GPU the XLA flags of tools/gpu/xla_flags.sh apply.
# BUDGET_S (default 450) is the whole run's time box; the process is killed 30 s after it.
set -euo pipefail
cd "$(dirname "$0")/../.."

smoke=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=(--smoke) ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $arg (use --smoke or nothing)" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-450}"
export PYTHONUNBUFFERED=1

if [[ ${#smoke[@]} -eq 0 ]] && compgen -G ".whl/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/synthclip_device_site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" --find-links .whl .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ ${#smoke[@]} -eq 0 ]] && command -v nvidia-smi >/dev/null; then
  # shellcheck source=tools/gpu/xla_flags.sh
  source tools/gpu/xla_flags.sh
fi

timeout -k 10 "$((BUDGET_S + 30))" "$PYTHON" -m tools.bench.device_check "${smoke[@]}" \
  --budget_s "$BUDGET_S" --out "${OUT:-device_check_out}"
