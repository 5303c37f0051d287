"""Ahead-of-time compilation of the train step for TPU pods and GPU nodes on a CPU host
(`python -m synthclip_jax.main --mode=compile`; run.py). Needs the `aot` extra."""
