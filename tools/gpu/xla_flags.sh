#!/usr/bin/env bash
# XLA flags for training on NVIDIA GPUs; sourced by tools/gpu/slurm_train.sbatch and
# tools/bench/device_check.sh (see tools/gpu/README.md, "XLA flags").
#
# The latency-hiding scheduler overlaps collectives (FSDP all-gathers, gradient
# reduce-scatters) with compute; the pipelined collectives and the double-buffered layer loop let
# a scanned layer's collectives run beside the previous layer's matmuls; the combine thresholds
# batch small collectives into fewer, larger ones. Flags come and go between jaxlib versions,
# and XLA aborts on one it does not know: the set is tried once (a tiny jit) and dropped, with a
# warning, if this jaxlib refuses it (not tried under DRY_RUN=1). SYNTHCLIP_XLA_FLAGS replaces the set; empty turns it off.
# Flags already in XLA_FLAGS are kept (later flags win).
SYNTHCLIP_GPU_XLA_FLAGS_DEFAULT="--xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_pipelined_all_gather=true --xla_gpu_enable_pipelined_reduce_scatter=true \
--xla_gpu_enable_pipelined_all_reduce=true --xla_gpu_enable_while_loop_double_buffering=true \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 \
--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728 \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728"
_synthclip_flags="${SYNTHCLIP_XLA_FLAGS-$SYNTHCLIP_GPU_XLA_FLAGS_DEFAULT}"
if [[ -n "$_synthclip_flags" ]]; then
  _synthclip_candidate="${_synthclip_flags} ${XLA_FLAGS:-}"
  if [[ "${DRY_RUN:-0}" == 1 ]] || XLA_FLAGS="$_synthclip_candidate" "${PYTHON:-python3}" -c \
      'import jax, jax.numpy as jnp; jax.jit(lambda x: x + 1)(jnp.ones(2)).block_until_ready()' \
      >/dev/null 2>&1; then
    export XLA_FLAGS="$_synthclip_candidate"
    echo "GPU XLA flags: $XLA_FLAGS" >&2
  else
    echo "WARNING: this jaxlib refuses the GPU XLA flags (${_synthclip_flags}); running" \
         "without them" >&2
  fi
fi
unset _synthclip_flags _synthclip_candidate
