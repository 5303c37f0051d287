"""The CLIPS captioner's own export format: OpenCLIP has no CLIPS decoder, so the towers go out
as OpenCLIP (or HF) weights as for any run and the decoder is written beside them:

  OUTDIR/captioner.safetensors   float32 tensors named by our parameter paths with '.'
                                 (e.g. `transformer.resblocks.in_proj_kernel`), in our layouts:
                                 `x @ W` kernels (in, out); blocks stacked on a leading depth
                                 axis; q/k/v kernel (width, 3, heads, head_dim); attention out
                                 kernel (heads, head_dim, width)
  OUTDIR/captioner_config.json   {"format": FORMAT, the `model.captioner` sizes, vocab_size,
                                  image_width, text_width, layernorm_eps, activation,
                                  "tokenizer" (model.text.tokenizer), "start_id", "end_id",
                                  "pad_id" (its special ids: the decoding starts at start_id
                                  and stops at end_id), "tensors": {name: shape}, "inputs":
                                  how the prefix is built}

`load_captioner(OUTDIR)` reads both back (numpy); `models/captioner.py` documents the function
these weights compute.
"""
import json
import os

import numpy as np
from safetensors.numpy import load_file

from synthclip_jax.data.text_tokenizer import special_ids_of
from synthclip_jax.export.openclip import _flatten, save_safetensors

FORMAT = "synthclip_jax.clips_captioner.v1"
WEIGHTS_NAME = "captioner.safetensors"
CONFIG_NAME = "captioner_config.json"


def split_captioner(params: dict):
    """(tower params, captioner params or None): the towers go to OpenCLIP/HF as before."""
    towers = {k: v for k, v in params.items() if k != "captioner"}
    return towers, params.get("captioner")


def export_captioner(config, captioner_params: dict, out_dir):
    m = config.model
    tensors = {k.replace("/", "."): np.asarray(v, np.float32)
               for k, v in _flatten(captioner_params).items()}
    ids = special_ids_of(m.text)
    meta = {"format": FORMAT, **dict(m.captioner), "vocab_size": m.text.vocab_size,
            "tokenizer": m.text.get("tokenizer", "openclip_bpe"), "start_id": ids.start,
            "end_id": ids.end, "pad_id": ids.pad,
            "image_width": m.image.width, "text_width": m.text.width,
            "layernorm_eps": m.layernorm_eps, "activation": m.activation,
            "inputs": "prefix = [ViT output tokens (class + patches, after ln_post) @ image_proj"
                      " | text tower output tokens of the web caption (after ln_final) @ "
                      "text_proj]; query q = query_tokens[q] + token_embedding[start + caption]"
                      "[q], predicting caption token q + 1; see synthclip_jax/models/"
                      "captioner.py",
            "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())}}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
        json.dump(meta, f, indent=2)
    save_safetensors(tensors, os.path.join(out_dir, WEIGHTS_NAME))


def load_captioner(out_dir) -> tuple:
    """(config dict, nested params dict of numpy arrays) as `export_captioner` wrote them."""
    with open(os.path.join(out_dir, CONFIG_NAME)) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{out_dir}/{CONFIG_NAME}: format {meta.get('format')!r}, expected "
                         f"{FORMAT!r}")
    params = {}
    for name, value in load_file(os.path.join(out_dir, WEIGHTS_NAME)).items():
        *parents, leaf = name.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return meta, params
