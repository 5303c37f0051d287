"""Export a training workdir (config.json + a checkpoint) in one of the FORMATS."""
import os

import ml_collections

from synthclip_jax.export.captioner import export_captioner, split_captioner
from synthclip_jax.export.hf import check_hf, export_hf
from synthclip_jax.export.openclip import check_openclip, export_openclip
from synthclip_jax.config.resume_check import read_config_json
from synthclip_jax.train.checkpoint import load_params

FORMATS = {"openclip": (check_openclip, export_openclip), "hf": (check_hf, export_hf)}


def export(workdir, out_dir, step=None, fmt="openclip", best: bool = False,
           ema: bool = False) -> int:
    """Writes checkpoint `step` (default: latest; `best`: the best_checkpoint/ step) of
    `workdir` to `out_dir`; returns the step. `ema`: its weight average (train.ema_decay).

    A config the format cannot express raises `ExportError` before any checkpoint is read.
    A CLIPS run's captioner is written beside the towers (export/captioner.py).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}; choose one of {sorted(FORMATS)}")
    check, write = FORMATS[fmt]
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):  # refuse before reading any checkpoint
        check(ml_collections.ConfigDict(read_config_json(workdir)))
    config, params, step = load_params(workdir, step, best=best, ema=ema)
    params, captioner = split_captioner(params)  # a CLIPS run's decoder: its own format
    write(config, params, out_dir)
    if captioner is not None:
        export_captioner(config, captioner, out_dir)
    return step
