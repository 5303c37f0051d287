"""JAX params -> OpenCLIP: `open_clip_config.json` + `open_clip_model.safetensors`.

`open_clip.create_model_and_transforms('local-dir:OUTDIR')` and
`open_clip.get_tokenizer('local-dir:OUTDIR')` load the result (strict state_dict loading);
`open_clip_model.safetensors` is the first name open_clip's `local-dir:` loader looks for.

Our parameters map one-to-one onto OpenCLIP's native `CLIP` (the rule tables below are the one
map, read by the exporter and by `hf.py`), so the conversion is transposes and reshapes; the two
silent traps are written into the config: the LayerNorm eps (ours is a config value, default
1e-6; PyTorch's default is 1e-5) and the GELU form (exact / tanh / QuickGELU). Whatever the target
cannot compute exactly is refused, never approximated. No pickle is written anywhere.

The weights are written with `safetensors.numpy`, so this module needs neither torch nor
open_clip (the package never imports torch).
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

from synthclip_jax.data.tokenizer import VOCAB_SIZE

WEIGHTS_NAME = "open_clip_model.safetensors"  # first in open_clip 3.3 factory's preferred_order


class ExportError(ValueError):
    """The config describes a model the target library cannot compute exactly."""


def refuse(key, value, why):
    raise ExportError(f"cannot export {key}={value!r}: {why}")


def check_openclip(config):
    m = config.model
    if m.text.pool_type not in ("argmax", "last"):
        # OpenCLIP's text_global_pool has first/last/argmax/eos, no masked mean.
        refuse("model.text.pool_type", m.text.pool_type,
               "OpenCLIP's TextTransformer has no mean pooling (it has argmax, last, first, eos)")
    if m.image.pool_type not in ("tok", "avg"):
        refuse("model.image.pool_type", m.image.pool_type, "OpenCLIP's ViT supports tok and avg")
    if m.activation not in ("gelu", "gelu_tanh", "quick_gelu"):
        refuse("model.activation", m.activation, "unknown activation")
    if m.text.vocab_size < VOCAB_SIZE:
        # The exported tokenizer is OpenCLIP's SimpleTokenizer (OpenAI BPE, ids up to 49407),
        # as `synthclip_jax.data.tokenizer`; a smaller embedding table cannot take its ids.
        refuse("model.text.vocab_size", m.text.vocab_size,
               f"the exported tokenizer (OpenAI BPE) emits ids up to {VOCAB_SIZE - 1}")
    for tower in ("image", "text"):
        width, heads = m[tower].width, m[tower].heads
        if width % heads:
            refuse(f"model.{tower}.heads", heads, f"does not divide width {width}")
        mlp = width * m[tower].mlp_ratio
        if int(mlp) != mlp:
            # OpenCLIP builds int(width * mlp_ratio), as we do; only a whole number is unambiguous.
            refuse(f"model.{tower}.mlp_ratio", m[tower].mlp_ratio, "width*mlp_ratio not integral")


def openclip_config(config) -> dict:
    """open_clip_config.json for `config` (check_openclip first)."""
    m = config.model
    norm = {"eps": float(m.layernorm_eps)}  # used as partial(LayerNorm, **norm_kwargs)
    # QuickGELU is selected by the top-level quick_gelu flag; exact GELU is nn.GELU's default;
    # tanh GELU is partial(nn.GELU, approximate='tanh') via act_kwargs.
    act = {"approximate": "tanh"} if m.activation == "gelu_tanh" else None
    vision = dict(
        image_size=int(config.data.image_size), layers=m.image.depth, width=m.image.width,
        head_width=m.image.width // m.image.heads,  # OpenCLIP derives heads = width // head_width
        patch_size=m.image.patch_size, mlp_ratio=float(m.image.mlp_ratio),
        pool_type=m.image.pool_type, no_ln_pre=not m.image.ln_pre,
        final_ln_after_pool=False,  # ours: ln_post on all tokens, then pool
        norm_kwargs=norm)
    text = dict(
        context_length=m.text.context_length, vocab_size=m.text.vocab_size, width=m.text.width,
        heads=m.text.heads, layers=m.text.depth, mlp_ratio=float(m.text.mlp_ratio),
        no_causal_mask=not m.text.causal, pool_type=m.text.pool_type, final_ln_after_pool=False,
        norm_kwargs=norm)
    if act:
        vision["act_kwargs"] = text["act_kwargs"] = act
    model_cfg = dict(embed_dim=m.embed_dim, vision_cfg=vision, text_cfg=text)
    if m.activation == "quick_gelu":
        model_cfg["quick_gelu"] = True
    if m.get("logit_bias_init") is not None:
        model_cfg["init_logit_bias"] = float(m.logit_bias_init)  # makes the logit_bias param exist
    preprocess = dict(mean=[float(x) for x in config.data.mean],
                      std=[float(x) for x in config.data.std],
                      interpolation="bicubic", resize_mode="shortest")
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


# --- tensors: our parameter -> OpenCLIP native `CLIP` state_dict key, and the transform ----------
# Our paths are those of `nnx.to_pure_dict`, '/'-joined. Per-layer tensors are stacked along a
# leading depth axis: row i goes to `resblocks.i`. In OpenCLIP's native `CLIP` the text keys sit
# at the top level ('transformer.resblocks.i...'; `CustomTextCLIP` would put them under `text.`).
# D = width, H = heads, Dh = D // H, p = patch size.

def _qkv_weight(k):  # (D, 3, H, Dh) -> (3D, D), rows [q; k; v], as nn.MultiheadAttention
    return k.reshape(k.shape[0], -1).T


BLOCK_RULES = (  # (our leaf under {tower}/transformer/resblocks, name under resblocks.i, transform)
    ("ln_1/scale", "ln_1.weight", None), ("ln_1/bias", "ln_1.bias", None),
    ("in_proj_kernel", "attn.in_proj_weight", _qkv_weight),
    ("in_proj_bias", "attn.in_proj_bias", lambda b: b.reshape(-1)),  # (3, H, Dh) -> 3D
    ("out_proj_kernel", "attn.out_proj.weight",
     lambda k: k.reshape(-1, k.shape[-1]).T),  # (H, Dh, D) -> (D, D).T
    ("out_proj_bias", "attn.out_proj.bias", None),
    ("ln_2/scale", "ln_2.weight", None), ("ln_2/bias", "ln_2.bias", None),
    ("c_fc_kernel", "mlp.c_fc.weight", np.transpose),  # (D, M) -> (M, D) as nn.Linear
    ("c_fc_bias", "mlp.c_fc.bias", None),
    ("c_proj_kernel", "mlp.c_proj.weight", np.transpose), ("c_proj_bias", "mlp.c_proj.bias", None),
)
TOP_RULES = (  # (our path, OpenCLIP native-CLIP key, transform)
    ("visual/conv1_kernel", "visual.conv1.weight",
     lambda k: k.transpose(3, 2, 0, 1)),  # (p, p, 3, D) HWIO -> OIHW
    ("visual/class_embedding", "visual.class_embedding", None),
    ("visual/positional_embedding", "visual.positional_embedding", None),  # row 0 = CLS in both
    ("visual/ln_pre/scale", "visual.ln_pre.weight", None),
    ("visual/ln_pre/bias", "visual.ln_pre.bias", None),
    ("visual/ln_post/scale", "visual.ln_post.weight", None),
    ("visual/ln_post/bias", "visual.ln_post.bias", None),
    ("visual/proj", "visual.proj", None),  # nn.Parameter used as x @ W: no transpose
    ("text/token_embedding", "token_embedding.weight", None),
    ("text/positional_embedding", "positional_embedding", None),
    ("text/ln_final/scale", "ln_final.weight", None), ("text/ln_final/bias", "ln_final.bias", None),
    ("text/text_projection", "text_projection", None),  # used as x @ W, as visual.proj
    ("logit_scale", "logit_scale", None),  # both store the log of the scale, 0-d
    ("logit_bias", "logit_bias", None),  # 0-d; exists in OpenCLIP only with init_logit_bias
)


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.update(_flatten(v, path + "/") if isinstance(v, dict) else {path: v})
    return out


def openclip_state_dict(params) -> dict:
    """Our pure-dict params -> OpenCLIP native `CLIP` state_dict (float32 numpy, contiguous)."""
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    out = {}
    for ours, theirs, fn in TOP_RULES:
        if ours in flat:
            out[theirs] = (fn or (lambda x: x))(flat.pop(ours))
    for tower, dst in (("visual", "visual.transformer"), ("text", "transformer")):
        for ours, theirs, fn in BLOCK_RULES:
            stacked = flat.pop(f"{tower}/transformer/resblocks/{ours}")
            for i, row in enumerate(stacked):  # leading depth axis: row i -> resblocks.i
                out[f"{dst}.resblocks.{i}.{theirs}"] = (fn or (lambda x: x))(row)
    if flat:  # a new parameter nobody mapped must not be dropped silently
        raise ExportError(f"parameters with no OpenCLIP mapping: {sorted(flat)}")
    # np.array, not ascontiguousarray: that makes the 0-d logit_scale (1,), unlike OpenCLIP's
    return {k: np.array(v, order="C") for k, v in out.items()}


def save_safetensors(tensors: dict, path):
    save_file({k: np.array(v, np.float32, order="C") for k, v in tensors.items()}, str(path))


def export_openclip(config, params, out_dir):
    check_openclip(config)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "open_clip_config.json"), "w") as f:
        json.dump(openclip_config(config), f, indent=2)
    save_safetensors(openclip_state_dict(params), os.path.join(out_dir, WEIGHTS_NAME))
