"""PyTorch CLIP weights -> our params and a workdir: the library behind `tools.import_weights`
and `--config.init_from`.

A source is an OpenCLIP `local-dir` export or state dict file (`load_openclip.py`), a
transformers `CLIPModel` directory (`load_hf.py`) or a SynthCLIP checkpoint
(`load_synthclip.py`). Its tensors are brought into OpenCLIP's layout and loaded by
`fit.to_params`, which refuses any key or shape that does not fit the model config. The model
config is the source's own (`open_clip_config.json`, HF `config.json`) unless one is given; if
both exist they must agree on every key that shapes the model or changes its function.

`write_workdir` writes what `train/checkpoint.py` reads: `config.json` and an orbax checkpoint
at step 0 holding `{'step', 'params'}` (no optimizer state: fine-tuning starts a fresh one), plus
`imported.json` (where the weights came from) and `config.py` (a `get_config()` returning
`config.json`, for `--config=WORKDIR/config.py`).
"""
import json
import os
import time

import ml_collections

from synthclip_jax.config.base import base
from synthclip_jax.export import (fit, load_hf, load_openclip, load_resnet, load_synthclip,
                                  load_timm)
from synthclip_jax.export.torch_files import WeightsError
from synthclip_jax.export.torch_files import check_finite
from synthclip_jax.run.files import read_json
from synthclip_jax.config.resume_check import IMPORTED, flatten

FORMATS = ("openclip", "hf", "synthclip") + load_resnet.FORMATS  # + ImageNet ResNet trunks
# Keys that neither shape the parameters nor change the function the weights compute.
FREE_MODEL_KEYS = ("model.dtype", "model.remat", "model.logit_scale_init",
                   "model.logit_scale_max", "model.logit_scale_min", "model.logit_bias_init")
RESIZABLE = ("data.image_size", "model.text.context_length")
RESNET_KEYS = ("model.image.tower", "model.image.resnet_depth", "model.image.resnet_width")
CONFIG_PY = '''"""The model tools.import_weights wrote into this workdir: config.json beside this file.

Use as --config=THIS_FILE (with --config.KEY=VALUE overrides) for --mode=eval, or copy the
model keys into a fine-tuning config.
"""
import os

from synthclip_jax.export.import_weights import read_config


def get_config():
    return read_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json"))
'''


def merge(config, values: dict, prefix=""):
    """Sets config's keys from a nested dict (types kept: JSON lists become tuples)."""
    for key, value in values.items():
        if isinstance(value, dict) and key in config and isinstance(
                config[key], ml_collections.ConfigDict):
            merge(config[key], value, f"{prefix}{key}.")
        else:
            config[key] = value
    return config


def read_config(path):
    """A config from a `.py` (its get_config()) or a `.json` (laid over the defaults)."""
    path = os.fspath(path)
    if path.endswith(".json"):
        return merge(base(), read_json(path, "give a config.json a training run wrote, or a "
                                             "get_config() .py"))
    if path.endswith(".py"):
        import importlib.util
        spec = importlib.util.spec_from_file_location("_import_weights_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    raise WeightsError(f"--config {path}: expected a .py config file or a config.json")


def detect_format(path) -> str:
    """The format of a source path (for `--config.init_from`, which names no format)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, load_openclip.CONFIG_NAME)):
            return "openclip"
        config = os.path.join(path, "config.json")
        if os.path.isfile(config) and load_hf.read_json(config).get("model_type") == "clip":
            return "hf"
        raise WeightsError(f"{path}: neither an OpenCLIP local-dir ({load_openclip.CONFIG_NAME})"
                           " nor a CLIPModel directory (config.json with model_type 'clip') nor a"
                           " workdir (config.json + checkpoints/)")
    if load_resnet.is_resnet(path):
        return "torchvision"
    return "synthclip" if load_synthclip.is_synthclip(path) else "openclip"


def timm_vit_file(src) -> bool:
    from synthclip_jax.export.torch_files import PICKLE_SUFFIXES, read_weights
    src = os.fspath(src)
    if not os.path.isfile(src) or not src.endswith(PICKLE_SUFFIXES + (".safetensors",)):
        return False
    return load_timm.is_timm_vit(read_weights(src)[0])


def read_source(fmt, src):
    """(OpenCLIP-layout tensors, {key: source name}, derive) where derive(config) sets the
    config from the source's own config, or is None (a bare state dict)."""
    src = os.fspath(src)
    if not os.path.exists(src):
        raise WeightsError(f"--src {src}: no such file or directory")
    if fmt == "openclip":
        tensors, names, cfg = load_openclip.read_source(src)
        derive = None if cfg is None else (lambda c: load_openclip.model_config(cfg, c))
        return tensors, names, derive
    if fmt == "hf":
        if not os.path.isdir(src):
            raise WeightsError(f"--src {src}: a CLIPModel source is a save_pretrained directory")
        tensors, names = load_hf.to_openclip(load_hf.read_tensors(src))
        return tensors, names, lambda c: load_hf.model_config(src, c)
    if fmt == "synthclip":
        return load_synthclip.read_source(src)
    raise WeightsError(f"--format {fmt!r}: choose one of {FORMATS}")


def effective(config) -> dict:
    """Flat config keys with each tower's eps/activation resolved (shared or per-tower)."""
    from synthclip_jax.models.tower_config import PER_TOWER, TOWERS, tower_option
    flat = flatten(config.to_dict())
    for key in PER_TOWER:
        flat.pop(f"model.{key}", None)
        for tower in TOWERS:
            flat[f"model.{tower}.{key}"] = tower_option(config.model, tower, key)
    return flat


def check_agrees(source_config, config, src, resize_pos_embed, guessed=()):
    """The given config describes the model the source's own config describes (`guessed`:
    keys the source's config only assumes)."""
    theirs, ours = effective(source_config), effective(config)
    keys = [k for k in theirs if k.startswith("model.") and k not in FREE_MODEL_KEYS + guessed]
    if theirs.get("model.image.tower") == "resnet":  # it reads none of the ViT's image keys
        keys = [k for k in keys if not k.startswith("model.image.") or k in RESNET_KEYS]
    keys.append("data.image_size")
    for key in keys:
        if resize_pos_embed and key in RESIZABLE:
            continue
        if theirs[key] != ours.get(key):
            raise WeightsError(f"{src}: its config has {key}={theirs[key]!r}, the given config "
                               f"{ours.get(key)!r}; set {key}={theirs[key]!r}")
    bias = (source_config.model.logit_bias_init is None, config.model.logit_bias_init is None)
    if bias[0] and not bias[1]:
        raise WeightsError(f"{src}: the source has no logit_bias but the config sets "
                           "model.logit_bias_init; unset it or pass --init-missing logit_bias")


def import_weights(fmt, src, config=None, *, resize_pos_embed=False, skip_keys=(),
                   init_missing=(), notes=None, timm_model=None, allow_nonfinite=False):
    """(config, params): params a pure dict of float32 numpy arrays fitting `config` (the given
    one, or derived from the source's own config). `notes` (a list) receives what an import
    left out on purpose (an ImageNet ResNet's classifier). `timm_model`: timm's architecture
    name of a `--format timm` ViT classifier (export/load_timm.py). Weights holding NaN or inf
    are refused naming the key unless `allow_nonfinite`."""
    if fmt == "timm" and timm_vit_file(src):
        if timm_model is None and config is None:
            raise WeightsError(f"{src}: a timm ViT state dict does not show its head count; "
                               "pass --timm-model NAME (e.g. vit_base_patch16_224)")
        config, params = load_timm.import_timm_vit(src, timm_model, config)
        check_finite(fit._flatten(params), src, allow=allow_nonfinite)
        return config, params
    if fmt in load_resnet.FORMATS:  # an image trunk only: the rest of the model is the config's
        if config is None:
            raise WeightsError(f"{src}: an ImageNet ResNet carries no CLIP config (text tower, "
                               "embed_dim, ...); pass --config FILE with "
                               "model.image.tower='resnet'")
        if not os.path.isfile(os.fspath(src)):
            raise WeightsError(f"--src {src}: a {fmt} ResNet source is a state dict file")
        params = load_resnet.import_resnet(src, config, lambda: seeded_tree(config),
                                           skip_keys=skip_keys, notes=notes)
        check_finite(fit._flatten(params), src, allow=allow_nonfinite)
        return config, params
    tensors, names, derive = read_source(fmt, src)
    check_finite(tensors, src, names, allow=allow_nonfinite)
    if config is None:
        if derive is None:
            raise WeightsError(f"{src}: a bare state dict carries no model config (head counts, "
                               "LayerNorm eps and activation cannot be read off tensors); pass "
                               "--config FILE describing the model")
        config = derive(base())
    elif derive is not None:
        source_config = derive(base())
        if "logit_bias" in init_missing:  # the source's missing bias will be filled, fine
            source_config.model.logit_bias_init = config.model.logit_bias_init
        guessed = load_synthclip.GUESSED if fmt == "synthclip" else ()
        check_agrees(source_config, config, src, resize_pos_embed, guessed)
    abstract = abstract_params(config)
    params = fit.to_params(tensors, fit.flat_shapes(abstract), names=names, skip_keys=skip_keys,
                           init_missing=init_missing, init_params=lambda: seeded_params(config),
                           resize_pos_embed=resize_pos_embed,
                           depths={"image": config.model.image.depth,
                                   "text": config.model.text.depth})
    return config, params


def seeded_tree(config) -> dict:
    """The config's seeded initial params as a pure dict (BatchNorm statistics included)."""
    from flax import nnx
    from synthclip_jax.models.two_tower import build_model
    return nnx.to_pure_dict(nnx.state(build_model(config, config.seed)))


def seeded_params(config) -> dict:
    """The config's seeded initial params, flat ('/'-paths)."""
    return fit._flatten(seeded_tree(config))


def abstract_params(config) -> dict:
    from flax import nnx
    from synthclip_jax.models.two_tower import build_model
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(config, 0))))


def write_workdir(out, config, params, record: dict):
    """config.json + an orbax checkpoint at step 0 ({'step', 'params'}) + imported.json +
    config.py in `out`, which must not hold a checkpoint yet."""
    import numpy as np
    from etils import epath
    from synthclip_jax.train.checkpoint import Checkpointer
    out = epath.Path(out)
    if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise WeightsError(f"--out {out}: already holds checkpoints; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    (out / "config.py").write_text(CONFIG_PY)
    checkpointer = Checkpointer(out / "checkpoints", keep=1)
    try:
        checkpointer.save(0, {"step": np.zeros((), np.int32), "params": params}, {})
    finally:
        checkpointer.close()
    record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / IMPORTED).write_text(json.dumps(record, indent=2) + "\n")
