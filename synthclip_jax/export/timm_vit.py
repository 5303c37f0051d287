"""Our image tower <-> timm's `VisionTransformer` (class token, no `norm_pre`, qkv bias): the key
table both ways, and the timm model names whose architecture our ViT config can be.

Used by the OpenCLIP export of models whose image tower OpenCLIP's native ViT cannot compute
(SynthCLIP: exact-GELU timm ViT beside a QuickGELU text tower; `openclip.py` writes it as
`vision_cfg.timm_model_name`, keys `visual.trunk.*`), and by the weight import of SynthCLIP
checkpoints (timm keys under `visual.`). No torch: numpy arrays in and out.

Our leaves are the `nnx.to_pure_dict` paths under `visual/`, '/'-joined; per-layer tensors are
stacked on a leading depth axis (row i <-> `blocks.i`). D = width, H = heads, Dh = D // H.
"""
import numpy as np

# timm model name -> (width, depth, heads, patch_size, mlp_ratio, image_size): the registered
# ViTs with a class token, no norm_pre and 'token' pooling, at their built-in image size (OpenCLIP's
# TimmModel does not pass the image size on, so the positional embedding has timm's grid).
# `test_vit` is timm's own tiny test model (tests use it).
TIMM_VITS = {
    "test_vit": (64, 6, 2, 16, 3.0, 160),
    "vit_tiny_patch16_224": (192, 12, 3, 16, 4.0, 224),
    "vit_small_patch16_224": (384, 12, 6, 16, 4.0, 224),
    "vit_small_patch32_224": (384, 12, 6, 32, 4.0, 224),
    "vit_base_patch16_224": (768, 12, 12, 16, 4.0, 224),
    "vit_base_patch32_224": (768, 12, 12, 32, 4.0, 224),
    "vit_large_patch16_224": (1024, 24, 16, 16, 4.0, 224),
}
TIMM_LAYERNORM_EPS = 1e-6  # timm's ViT LayerNorm: partial(nn.LayerNorm, eps=1e-6)


def timm_model_name(image_cfg, image_size: int):
    """The TIMM_VITS name with exactly this architecture, or None."""
    arch = (image_cfg.width, image_cfg.depth, image_cfg.heads, image_cfg.patch_size,
            float(image_cfg.mlp_ratio), int(image_size))
    return next((name for name, value in TIMM_VITS.items() if value == arch), None)


# How a tensor is laid out in timm relative to ours: a name for each (transform, inverse) pair.
def _to_timm(layout, x):
    if layout == "T":  # nn.Linear weight (out, in) vs our (in, out) kernel
        return x.T
    if layout == "qkv":  # (D, 3, H, Dh) -> (3D, D), rows [q; k; v]
        return x.reshape(x.shape[0], -1).T
    if layout == "out":  # (H, Dh, D) -> (D, D) as nn.Linear
        return x.reshape(-1, x.shape[-1]).T
    if layout == "conv":  # (p, p, 3, D) HWIO -> (D, 3, p, p) OIHW
        return x.transpose(3, 2, 0, 1)
    if layout == "flat":  # (3, H, Dh) -> (3D,)
        return x.reshape(-1)
    if layout == "batch1":  # (N, D) -> (1, N, D), cls (D,) -> (1, 1, D)
        return x.reshape(1, -1, x.shape[-1])
    return x


def _from_timm(layout, x, shape):
    if layout in ("T", "qkv", "out"):
        return x.T.reshape(shape)
    if layout == "conv":
        return x.transpose(2, 3, 1, 0)
    return x.reshape(shape)


BLOCK_KEYS = (  # (our leaf under visual/transformer/resblocks, timm key under blocks.i, layout)
    ("ln_1/scale", "norm1.weight", None), ("ln_1/bias", "norm1.bias", None),
    ("in_proj_kernel", "attn.qkv.weight", "qkv"), ("in_proj_bias", "attn.qkv.bias", "flat"),
    ("out_proj_kernel", "attn.proj.weight", "out"), ("out_proj_bias", "attn.proj.bias", None),
    ("ln_2/scale", "norm2.weight", None), ("ln_2/bias", "norm2.bias", None),
    ("c_fc_kernel", "mlp.fc1.weight", "T"), ("c_fc_bias", "mlp.fc1.bias", None),
    ("c_proj_kernel", "mlp.fc2.weight", "T"), ("c_proj_bias", "mlp.fc2.bias", None),
)
TRUNK_KEYS = (  # (our leaf under visual/, timm key, layout)
    ("conv1_kernel", "patch_embed.proj.weight", "conv"),
    ("conv1_bias", "patch_embed.proj.bias", None),
    ("class_embedding", "cls_token", "batch1"),
    ("positional_embedding", "pos_embed", "batch1"),  # row 0 = the class token's in both
    ("ln_post/scale", "norm.weight", None), ("ln_post/bias", "norm.bias", None),
)
BLOCKS = "transformer/resblocks/"
TIMM_LEAVES = (*(k for k, _, _ in TRUNK_KEYS), *(BLOCKS + k for k, _, _ in BLOCK_KEYS))


def to_timm(visual: dict, prefix: str = "") -> dict:
    """Our flat `visual/...`-relative leaves -> timm trunk state_dict (keys `prefix + name`).

    A tower without a patch bias gets timm's bias as zeros (the same function). Leaves the
    table does not know (ln_pre, proj) are left to the caller: `visual` is not modified.
    """
    out = {}
    for ours, theirs, layout in TRUNK_KEYS:
        if ours == "conv1_bias" and ours not in visual:
            out[prefix + theirs] = np.zeros(visual["conv1_kernel"].shape[-1], np.float32)
            continue
        out[prefix + theirs] = _to_timm(layout, visual[ours])
    for ours, theirs, layout in BLOCK_KEYS:
        for i, row in enumerate(visual[BLOCKS + ours]):
            out[f"{prefix}blocks.{i}.{theirs}"] = _to_timm(layout, row)
    return out


def from_timm(state: dict, shapes: dict, prefix: str = "") -> dict:
    """timm trunk state_dict -> our flat `visual/...`-relative leaves, shaped as `shapes` (our
    leaf -> shape; it decides the heads split and whether the tower has a patch bias)."""
    out = {}
    for ours, theirs, layout in TRUNK_KEYS:
        if ours not in shapes:
            bias = np.asarray(state[prefix + theirs])
            if ours == "conv1_bias" and not bias.any():
                continue  # a zero bias is the same function as none
            raise ValueError(f"{prefix + theirs} is not zero but model.image.patch_bias=False")
        out[ours] = _from_timm(layout, np.asarray(state[prefix + theirs]), shapes[ours])
    for ours, theirs, layout in BLOCK_KEYS:
        depth = shapes[BLOCKS + ours][0]
        rows = [_from_timm(layout, np.asarray(state[f"{prefix}blocks.{i}.{theirs}"]),
                           shapes[BLOCKS + ours][1:]) for i in range(depth)]
        out[BLOCKS + ours] = np.stack(rows)
    return out
