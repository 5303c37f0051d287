"""What a run writes and watches in its workdir and on its hosts: atomic files and JSON lines
(`files.py`), one trainer per workdir (`workdir_lock.py`), `provenance.json`, `metrics.jsonl` /
`eval.jsonl` and TensorBoard (`metrics.py`), `curves.png` (`plots.py`), Weights & Biases
(`wandb_log.py`), device memory (`device_memory.py`) and joining a multi-host run
(`distributed.py`).

Kept import-light (nothing imported here): the vLLM environment of data_gen imports `files`
without jax.
"""
