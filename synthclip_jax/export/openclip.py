"""JAX params -> OpenCLIP: `open_clip_config.json` + `open_clip_model.safetensors`.

`open_clip.create_model_and_transforms('local-dir:OUTDIR')` and
`open_clip.get_tokenizer('local-dir:OUTDIR')` load the result (strict state_dict loading);
`open_clip_model.safetensors` is the first name open_clip's `local-dir:` loader looks for.

Our parameters map one-to-one onto OpenCLIP's native `CLIP` (the rule tables below are the one
map, read by the exporter and by `hf.py`; a patch bias is folded into the positional embedding),
so the conversion is transposes and reshapes; the two silent traps are written into the config,
per tower: the LayerNorm eps (ours is a config value, default 1e-6; PyTorch's default is 1e-5) and
the GELU form (exact / tanh / QuickGELU). An exact-GELU image tower beside a QuickGELU text tower
(SynthCLIP) goes out as OpenCLIP's timm tower (`timm_vit.py`). Whatever the target cannot
compute exactly is refused with the config key named, never approximated. No pickle is written
anywhere.

The weights are written with `safetensors.numpy`, so this module needs neither torch nor
open_clip (the package never imports torch).
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

from synthclip_jax.data.tokenizer import VOCAB_SIZE
from synthclip_jax.export.timm_vit import (TIMM_LAYERNORM_EPS, TIMM_LEAVES, TIMM_VITS,
                                          timm_model_name, to_timm)
from synthclip_jax.export.torchvision_resnet import to_torchvision
from synthclip_jax.run.files import atomic_path, default_file_mode
from synthclip_jax.models.tower_config import TOWERS, tower_key, tower_option

WEIGHTS_NAME = "open_clip_model.safetensors"  # first in open_clip 3.3 factory's preferred_order


class ExportError(ValueError):
    """The config describes a model the target library cannot compute exactly."""


def refuse(key, value, why):
    raise ExportError(f"cannot export {key}={value!r}: {why}")


def tower_acts(m) -> dict:
    return {t: tower_option(m, t, "activation") for t in TOWERS}


def image_tower_kind(config) -> str:
    """'native' (OpenCLIP's VisionTransformer), 'timm' (a timm ViT) or 'resnet' (a timm ResNet),
    the last two through `vision_cfg.timm_model_name`.

    OpenCLIP chooses QuickGELU for both native towers at once (`quick_gelu`); exact vs tanh GELU
    is per tower (`act_kwargs`). An exact-GELU image tower beside a QuickGELU text tower
    (SynthCLIP) is only expressible through the timm tower, which always uses exact GELU.
    """
    m = config.model
    if m.image.get("tower", "vit") == "resnet":
        return "resnet"
    acts = tower_acts(m)
    quick = {t: a == "quick_gelu" for t, a in acts.items()}
    if quick["image"] == quick["text"]:
        return "native"
    if quick["image"]:
        refuse(tower_key(m, "image", "activation"), acts["image"],
               "OpenCLIP cannot pair a QuickGELU image tower with a "
               f"{acts['text']} text tower (quick_gelu sets both native towers; timm towers "
               "use exact GELU)")
    if acts["image"] != "gelu":
        refuse(tower_key(m, "image", "activation"), acts["image"],
               "beside a QuickGELU text tower OpenCLIP needs its timm image tower, whose GELU "
               "is exact: set it to 'gelu'")
    return "timm"


def check_timm_image(config) -> str:
    """The timm model name for the image tower, or ExportError naming the key that prevents it."""
    m = config.model
    eps = tower_option(m, "image", "layernorm_eps")
    if eps != TIMM_LAYERNORM_EPS:
        refuse(tower_key(m, "image", "layernorm_eps"), eps,
               f"the timm image tower (needed for QuickGELU text + GELU image) has LayerNorm eps "
               f"{TIMM_LAYERNORM_EPS}")
    if m.image.ln_pre:
        refuse("model.image.ln_pre", m.image.ln_pre, "timm's ViTs have no ln_pre (norm_pre)")
    if m.image.pool_type != "tok":
        refuse("model.image.pool_type", m.image.pool_type,
               "the timm image tower is exported with 'token' pooling only")
    name = timm_model_name(m.image, config.data.image_size)
    if name is None:
        arch = {k: m.image[k] for k in ("width", "depth", "heads", "patch_size", "mlp_ratio")}
        refuse("model.image", arch | {"image_size": config.data.image_size},
               f"no timm ViT has this architecture (known: {sorted(TIMM_VITS)})")
    return name


def check_timm_resnet(config) -> str:
    """The timm model name of a ResNet image tower (OpenCLIP's TimmModel builds
    `timm.create_model(name)`: timm's resnet{18..152} are torchvision's architecture and keys;
    its head: timm's average pool, then `head.proj`, a bias-free nn.Linear), or ExportError."""
    m = config.model
    if m.get("projection", "linear") != "linear":
        # simple-clip's head is Linear(d, d)-ReLU-Linear(d, E), no biases; OpenCLIP's timm
        # 'mlp' head is timm's Mlp(d, 2E, E): GELU, a bias on its first Linear, hidden 2E.
        refuse("model.projection", m.projection, "OpenCLIP's timm tower has a linear head or "
               "timm's Mlp (hidden 2*embed_dim, GELU, biased fc1), not Linear-ReLU-Linear "
               "without biases")
    if m.image.resnet_width != 64:
        refuse("model.image.resnet_width", m.image.resnet_width, "timm's registered ResNets "
               "(what OpenCLIP's timm tower can build by name) have stem width 64")
    return f"resnet{m.image.resnet_depth}"


def check_openclip(config):
    check_torch_clip(config)
    kind = image_tower_kind(config)
    if kind == "timm":
        check_timm_image(config)
    elif kind == "resnet":
        check_timm_resnet(config)


def check_torch_clip(config):
    """What neither OpenCLIP's CLIP nor transformers' CLIPModel can compute (`hf.py` adds its
    own refusals)."""
    m = config.model
    vit = m.image.get("tower", "vit") == "vit"  # a ResNet reads none of the ViT's keys
    if m.text.get("tokenizer", "openclip_bpe") != "openclip_bpe":
        # OpenCLIP 3.3's tokenizers cannot write CLIPS's layout (its HF tokenizer puts [CLS]
        # first; REFERENCE 4.1): the exported model would be read with the wrong ids.
        refuse("model.text.tokenizer", m.text.tokenizer,
               "OpenCLIP has no tokenizer with this layout (only openclip_bpe exports)")
    if m.text.pool_type not in ("argmax", "last"):
        # OpenCLIP's text_global_pool has first/last/argmax/eos, no masked mean.
        refuse("model.text.pool_type", m.text.pool_type,
               "OpenCLIP's TextTransformer has no mean pooling (it has argmax, last, first, eos)")
    if vit and m.image.pool_type not in ("tok", "avg"):
        refuse("model.image.pool_type", m.image.pool_type, "OpenCLIP's ViT supports tok and avg")
    if m.get("projection", "linear") != "linear" and vit:  # ResNet: check_timm_resnet
        refuse("model.projection", m.projection, "OpenCLIP's towers project with one matrix "
               "(no Linear-ReLU-Linear head)")
    for tower, act in tower_acts(m).items():
        if act not in ("gelu", "gelu_tanh", "quick_gelu"):
            refuse(tower_key(m, tower, "activation"), act, "unknown activation")
    if m.text.vocab_size < VOCAB_SIZE:
        # The exported tokenizer is OpenCLIP's SimpleTokenizer (OpenAI BPE, ids up to 49407),
        # as `synthclip_jax.data.tokenizer`; a smaller embedding table cannot take its ids.
        refuse("model.text.vocab_size", m.text.vocab_size,
               f"the exported tokenizer (OpenAI BPE) emits ids up to {VOCAB_SIZE - 1}")
    for tower in ("image", "text") if vit else ("text",):
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
    acts = tower_acts(m)

    def norm(tower):  # used as partial(LayerNorm, **norm_kwargs), per tower
        return {"eps": float(tower_option(m, tower, "layernorm_eps"))}

    text = dict(
        context_length=m.text.context_length, vocab_size=m.text.vocab_size, width=m.text.width,
        heads=m.text.heads, layers=m.text.depth, mlp_ratio=float(m.text.mlp_ratio),
        no_causal_mask=not m.text.causal, pool_type=m.text.pool_type,
        final_ln_after_pool=bool(m.text.get("final_ln_after_pool", False)),
        norm_kwargs=norm("text"))
    kind = image_tower_kind(config)
    if kind == "resnet":
        # timm's BatchNorms and ReLUs are built in; 'avg' is timm's global average pool
        vision = dict(image_size=int(config.data.image_size),
                      timm_model_name=check_timm_resnet(config), timm_model_pretrained=False,
                      timm_pool="avg", timm_proj="linear", timm_proj_bias=False)
    elif kind == "timm":
        # timm: LN eps 1e-6 and exact GELU built in (check_timm_image); the projection is
        # OpenCLIP's head.proj, a bias-free nn.Linear, after timm's 'token' pooling.
        vision = dict(image_size=int(config.data.image_size),
                      timm_model_name=check_timm_image(config), timm_model_pretrained=False,
                      timm_pool="token", timm_proj="linear", timm_proj_bias=False)
    else:
        vision = dict(
            image_size=int(config.data.image_size), layers=m.image.depth, width=m.image.width,
            head_width=m.image.width // m.image.heads,  # OpenCLIP: heads = width // head_width
            patch_size=m.image.patch_size, mlp_ratio=float(m.image.mlp_ratio),
            pool_type=m.image.pool_type, no_ln_pre=not m.image.ln_pre,
            final_ln_after_pool=bool(m.image.get("final_ln_after_pool", False)),
            norm_kwargs=norm("image"))
    # QuickGELU is the top-level quick_gelu flag (both native towers; the text tower only beside a
    # timm image tower); exact GELU is nn.GELU's default; tanh is act_kwargs, per tower.
    for tower, cfg in (("image", vision), ("text", text)):
        if acts[tower] == "gelu_tanh" and not (tower == "image" and kind == "resnet"):
            cfg["act_kwargs"] = {"approximate": "tanh"}
    model_cfg = dict(embed_dim=m.embed_dim, vision_cfg=vision, text_cfg=text)
    if acts["text"] == "quick_gelu":
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


def openclip_state_dict(params, image_tower: str = "native") -> dict:
    """Our pure-dict params -> OpenCLIP `CLIP` state_dict (float32 numpy, contiguous), with the
    native image tower or (`image_tower='timm'`) the timm one (`visual.trunk.*`)."""
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    out = {}
    if image_tower == "resnet":  # timm's ResNet keys are torchvision's; BatchNorm statistics too
        visual = {k[len("visual/"):]: flat.pop(k) for k in list(flat) if k.startswith("visual/")}
        out.update(to_torchvision(visual, prefix="visual.trunk."))
        out["visual.head.proj.weight"] = visual["proj"].T  # x @ proj -> nn.Linear, as for timm
    elif image_tower == "timm":
        visual = {k[len("visual/"):]: flat.pop(k) for k in list(flat) if k.startswith("visual/")}
        unmapped = set(visual) - set(TIMM_LEAVES) - {"proj"}
        if unmapped:  # e.g. ln_pre: timm's ViT has no place for it
            raise ExportError(f"image parameters with no timm mapping: {sorted(unmapped)}")
        out.update(to_timm(visual, prefix="visual.trunk."))
        # x @ proj (D, E) -> OpenCLIP's head.proj, nn.Linear(D, E, bias=False): weight (E, D)
        out["visual.head.proj.weight"] = visual["proj"].T
    elif "visual/conv1_bias" in flat:
        # OpenCLIP's conv1 has no bias; adding it to every patch token's positional embedding
        # (not the class token's, row 0) is the same function.
        bias = flat.pop("visual/conv1_bias")
        pos = flat["visual/positional_embedding"]
        flat["visual/positional_embedding"] = np.concatenate([pos[:1], pos[1:] + bias])
    for ours, theirs, fn in TOP_RULES:
        if ours in flat:
            out[theirs] = (fn or (lambda x: x))(flat.pop(ours))
    towers = (("text", "transformer"),) if image_tower in ("timm", "resnet") else (
        ("visual", "visual.transformer"), ("text", "transformer"))
    for tower, dst in towers:
        for ours, theirs, fn in BLOCK_RULES:
            stacked = flat.pop(f"{tower}/transformer/resblocks/{ours}")
            for i, row in enumerate(stacked):  # leading depth axis: row i -> resblocks.i
                out[f"{dst}.resblocks.{i}.{theirs}"] = (fn or (lambda x: x))(row)
    if flat:  # a new parameter nobody mapped must not be dropped silently
        raise ExportError(f"parameters with no OpenCLIP mapping: {sorted(flat)}")
    # np.array, not ascontiguousarray: that makes the 0-d logit_scale (1,), unlike OpenCLIP's
    return {k: np.array(v, order="C") for k, v in out.items()}


def save_safetensors(tensors: dict, path):
    """Floats as float32; integers (BatchNorm's num_batches_tracked) keep their dtype. Written
    whole or not at all (a temporary renamed), with the mode a plain file gets (0644 less the
    umask; safetensors alone creates 0600, unlike the config beside it)."""
    with atomic_path(path) as tmp:
        save_file({k: np.array(v, None if np.issubdtype(np.asarray(v).dtype, np.integer)
                               else np.float32, order="C") for k, v in tensors.items()}, str(tmp))
        os.chmod(tmp, default_file_mode())


def export_openclip(config, params, out_dir):
    check_openclip(config)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "open_clip_config.json"), "w") as f:
        json.dump(openclip_config(config), f, indent=2)
    state = openclip_state_dict(params, image_tower_kind(config))
    save_safetensors(state, os.path.join(out_dir, WEIGHTS_NAME))
