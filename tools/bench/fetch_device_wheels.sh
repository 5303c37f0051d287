#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels the GPU check machine lacks: what synthclip_jax,
# data_gen's diffusers backend and tools/bench/device_check.py import beyond that machine's
# image (python 3.12, x86-64; its package list is in the device notes). The folder travels with
# the working tree (64 MiB limit; these are ~11 MiB), and tools/bench/device_check.sh installs it
# offline (pip --no-index --find-links .whl).
#
#   bash tools/bench/fetch_device_wheels.sh        # run here, where pip reaches its registry
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
# Versions as constraints.txt / requirements-test.txt pin them; --no-deps, so each missing
# dependency is named too (grain: array_record, portpicker; ftfy: wcwidth; diffusers:
# importlib_metadata). Already on that machine: jax 0.11.2, flax, optax, orbax, absl, etils,
# numpy, Pillow, protobuf, tokenizers, safetensors, matplotlib, torch, transformers.
WHEELS=(
  grain==0.2.18 array_record==0.8.6 portpicker==1.6.0
  ml_collections==1.1.0 crc32c==2.9.post0 ftfy==6.3.1 wcwidth==0.7.0 tensorboardX==2.6.5
  diffusers==0.42.1 importlib_metadata==8.7.0
)
mkdir -p .whl
for wheel in "${WHEELS[@]}"; do
  echo "fetching $wheel" >&2
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$wheel"
done
du -sh .whl >&2
