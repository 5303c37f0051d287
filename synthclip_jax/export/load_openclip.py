"""OpenCLIP -> ours: a `local-dir` export (`open_clip_config.json` + weights) or a state dict file.

`model_config` reads OpenCLIP's `model_cfg` into our `config.model` (and `data.*` from its
`preprocess_cfg`): the inverse of `openclip.openclip_config`. Only OpenCLIP's native `CLIP` (native ViT or a timm image tower
holding a ViT of `timm_vit.TIMM_VITS` or timm's `resnet{18..152}`, and the native
TextTransformer) is read; a field that would make it compute something our model cannot (layer
scale, attentional pooling, another timm model or an HF tower, a custom tokenizer, ...) is
refused naming the field, never dropped. A bare state dict carries no config (head counts, eps
and activation cannot be read off tensors): it needs `--config`.
"""
import os

from synthclip_jax.data.tokenizer import VOCAB_SIZE
from synthclip_jax.export.openclip import WEIGHTS_NAME
from synthclip_jax.export.timm_vit import TIMM_LAYERNORM_EPS, TIMM_VITS
from synthclip_jax.export.torch_files import PICKLE_SUFFIXES, WeightsError, read_weights
from synthclip_jax.run.files import read_json

CONFIG_NAME = "open_clip_config.json"
# open_clip's factory looks for these in a local dir, in this order.
WEIGHT_NAMES = (WEIGHTS_NAME, "open_clip_pytorch_model.bin", "open_clip_model.bin",
                "model.safetensors", "pytorch_model.bin")
TORCH_LN_EPS = 1e-5  # nn.LayerNorm's default, used by OpenCLIP when norm_kwargs is absent

# Fields that do not change the function computed at inference (training-time or output
# options), or that only matter when another field (refused if set) enables them.
IGNORED = {"patch_dropout", "output_tokens", "timm_model_pretrained", "timm_drop",
           "timm_drop_path", "attn_pooler_queries",
           "attn_pooler_heads", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type",
           "pad_id", "eos_id", "tokenizer_kwargs", "tokenizer_mode"}
# Fields that must keep OpenCLIP's default: anything else computes what our model cannot.
DEFAULTS = {"ls_init_value": None, "attentional_pool": False, "pos_embed_type": "learnable",
            "block_type": None, "qk_norm": False,
            "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
            "scale_attn": False, "scale_fc": False, "timm_model_name": None,
            "hf_model_name": None, "hf_tokenizer_name": None, "embed_cls": False,
            "proj_bias": False, "proj_type": "linear", "timm_pool": "token",
            "timm_proj": "linear", "timm_proj_bias": False}
TOP_FIELDS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_bias",
              "init_logit_scale", "custom_text", "cast_dtype"}


def refuse(field, value, why=""):
    raise WeightsError(f"{CONFIG_NAME}: {field}={value!r} is not supported by synthclip_jax's "
                       f"model{': ' + why if why else ''}")


def check_fields(cfg: dict, tower: str, mapped: set):
    for field, value in cfg.items():
        if field in mapped or field in IGNORED:
            continue
        if field not in DEFAULTS:
            refuse(f"{tower}.{field}", value, "unknown field")
        if value != DEFAULTS[field] and not (field == "block_type" and value == "default"):
            refuse(f"{tower}.{field}", value)


def tower_form(cfg: dict, tower: str, quick_gelu: bool):
    """(eps, activation name) of one tower's norm_kwargs / act_kwargs."""
    norm = dict(cfg.get("norm_kwargs") or {})
    eps = float(norm.pop("eps", TORCH_LN_EPS))
    if norm:
        refuse(f"{tower}.norm_kwargs", cfg["norm_kwargs"])
    act = dict(cfg.get("act_kwargs") or {})
    approximate = act.pop("approximate", "none")
    if act or approximate not in ("none", "tanh") or (quick_gelu and approximate != "none"):
        refuse(f"{tower}.act_kwargs", cfg["act_kwargs"])
    return eps, "quick_gelu" if quick_gelu else ("gelu_tanh" if approximate == "tanh" else "gelu")


def model_config(open_clip_cfg: dict, config):
    """`config` (a base config) with model.* and data.* set from open_clip_config.json."""
    m_cfg = open_clip_cfg.get("model_cfg", open_clip_cfg)
    unknown = set(m_cfg) - TOP_FIELDS
    if unknown:
        refuse(sorted(unknown)[0], m_cfg[sorted(unknown)[0]], "unknown field")
    if m_cfg.get("custom_text"):
        refuse("custom_text", True, "only the native CLIP layout (text keys at the top level)")
    v, t = dict(m_cfg["vision_cfg"]), dict(m_cfg["text_cfg"])
    timm_name = v.pop("timm_model_name", None)
    resnet = timm_resnet(timm_name, v)
    check_fields(v, "vision_cfg", {"layers", "width", "head_width", "mlp_ratio", "patch_size",
                                   "image_size", "no_ln_pre", "pool_type", "norm_kwargs",
                                   "act_kwargs", "final_ln_after_pool"})
    check_fields(t, "text_cfg", {"context_length", "vocab_size", "width", "heads", "layers",
                                 "mlp_ratio", "no_causal_mask", "pool_type", "norm_kwargs",
                                 "act_kwargs", "final_ln_after_pool"})
    quick = bool(m_cfg.get("quick_gelu", False))
    t_eps, t_act = tower_form(t, "text_cfg", quick)
    size = v.get("image_size", 224)
    size = size if isinstance(size, int) else (size[0] if size[0] == size[1] else refuse(
        "vision_cfg.image_size", size, "non-square images"))
    if t.get("pool_type", "argmax") not in ("argmax", "last"):
        refuse("text_cfg.pool_type", t["pool_type"])
    m = config.model
    if resnet is not None:  # BatchNorm and ReLU: no LayerNorm eps or GELU to carry
        image, (v_eps, v_act) = resnet, (t_eps, t_act)
    elif timm_name is not None:
        image = timm_image(timm_name, size)
        v_eps, v_act = TIMM_LAYERNORM_EPS, "gelu"  # timm's ViT, whatever quick_gelu says
    else:
        image = native_image(v)
        v_eps, v_act = tower_form(v, "vision_cfg", quick)
    m.layernorm_eps, m.activation = t_eps, t_act
    if (v_eps, v_act) != (t_eps, t_act):  # per-tower keys only where the towers differ
        image.update(layernorm_eps=v_eps, activation=v_act)
    m.embed_dim = int(m_cfg["embed_dim"])
    m.image.update(image)
    m.text.update(width=t.get("width", 512), depth=t.get("layers", 12), heads=t.get("heads", 8),
                  mlp_ratio=float(t.get("mlp_ratio", 4.0)),
                  context_length=t.get("context_length", 77),
                  vocab_size=t.get("vocab_size", VOCAB_SIZE),
                  causal=not t.get("no_causal_mask", False), pool_type=t.get("pool_type", "argmax"),
                  final_ln_after_pool=bool(t.get("final_ln_after_pool", False)))
    if m_cfg.get("init_logit_bias") is not None:
        m.logit_bias_init = float(m_cfg["init_logit_bias"])  # the logit_bias param exists
    if m_cfg.get("init_logit_scale") is not None:
        m.logit_scale_init = float(m_cfg["init_logit_scale"])
    config.data.image_size = int(size)
    pre = open_clip_cfg.get("preprocess_cfg", {})
    if "mean" in pre and "std" in pre:
        config.data.mean, config.data.std = tuple(pre["mean"]), tuple(pre["std"])
    return config


def native_image(v: dict) -> dict:
    """model.image.* of OpenCLIP's native VisionTransformer config."""
    if not isinstance(v.get("layers", 12), int):
        refuse("vision_cfg.layers", v["layers"], "a ModifiedResNet image tower")
    width, head_width = v.get("width", 768), v.get("head_width", 64)
    if width % head_width:
        refuse("vision_cfg.head_width", head_width, f"does not divide width {width}")
    if v.get("pool_type", "tok") not in ("tok", "avg"):
        refuse("vision_cfg.pool_type", v["pool_type"])
    return dict(width=width, depth=v.get("layers", 12), heads=width // head_width,
                patch_size=v.get("patch_size", 16), mlp_ratio=float(v.get("mlp_ratio", 4.0)),
                pool_type=v.get("pool_type", "tok"), ln_pre=not v.get("no_ln_pre", False),
                patch_bias=False, final_ln_after_pool=bool(v.get("final_ln_after_pool", False)))


def timm_image(name: str, size: int) -> dict:
    """model.image.* of OpenCLIP's timm tower `name` (token pooling, bias-free linear proj)."""
    if name not in TIMM_VITS:
        refuse("vision_cfg.timm_model_name", name, f"known timm ViTs: {sorted(TIMM_VITS)}")
    width, depth, heads, patch, mlp_ratio, timm_size = TIMM_VITS[name]
    if size != timm_size:  # OpenCLIP's TimmModel builds timm's own grid
        refuse("vision_cfg.image_size", size, f"{name} is built at {timm_size} px")
    return dict(width=width, depth=depth, heads=heads, patch_size=patch, mlp_ratio=mlp_ratio,
                pool_type="tok", ln_pre=False, patch_bias=True, final_ln_after_pool=False)


def timm_resnet(name, v: dict):
    """model.image.* of OpenCLIP's timm tower holding timm's `resnet{depth}` (average pool, then
    the bias-free linear `head.proj`), or None for another timm model; pops `timm_pool`."""
    from synthclip_jax.models.resnet import LAYOUTS
    if name is None or not name.startswith("resnet") or not name[6:].isdigit():
        return None
    if int(name[6:]) not in LAYOUTS:
        refuse("vision_cfg.timm_model_name", name, f"known ResNets: resnet{sorted(LAYOUTS)}")
    pool = v.pop("timm_pool", "avg")  # CLIPVisionCfg's default
    if pool != "avg":
        refuse("vision_cfg.timm_pool", pool, "our ResNet tower average-pools")
    return dict(tower="resnet", resnet_depth=int(name[6:]), resnet_width=64)


def weights_file(directory) -> str:
    for name in WEIGHT_NAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise WeightsError(f"{directory}: none of {list(WEIGHT_NAMES)} found")


TIMM_PROJ = "visual.head.proj.weight"  # OpenCLIP's timm tower: nn.Linear(D, E), weight (E, D)


def read_source(src):
    """(tensors, names for messages, open_clip_config.json dict or None) of a local dir or a
    file; a timm tower's projection is renamed to the native `visual.proj` (x @ W)."""
    cfg = None
    if os.path.isdir(src):
        path = os.path.join(src, CONFIG_NAME)
        if os.path.isfile(path):
            cfg = read_json(path, "it should hold OpenCLIP's model_cfg (as open_clip's "
                                  "local-dir export writes it); re-export or re-download it")
        tensors, _ = read_weights(weights_file(src))
    elif src.endswith(PICKLE_SUFFIXES + (".safetensors",)):
        tensors, _ = read_weights(src)
    else:
        raise WeightsError(f"{src}: not a directory nor a weights file")
    names = {}
    if TIMM_PROJ in tensors:
        tensors["visual.proj"], names["visual.proj"] = tensors.pop(TIMM_PROJ).T, TIMM_PROJ
    return tensors, names, cfg

