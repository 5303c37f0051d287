"""An OpenCLIP-layout state dict -> our params, for a given config, refusing what does not fit.

The map is the exporter's rule tables (`openclip.TOP_RULES`, `openclip.BLOCK_RULES`), inverted:
each rule's transform is a pure rearrangement (transpose/reshape), so running it on an array of
element indices of our shape tells where every source element goes. Import is therefore the
exact inverse of export, and the expected source shape comes from the same rule.

Every source key must be used and every parameter of ours filled: a key left over, a parameter
missing, another depth or a shape that does not fit is a `WeightsError` naming the key, both
shapes and the config key to change, unless `skip_keys` (source keys not to load) or
`init_missing` (our parameter paths left at their seeded init) list it. Nothing is dropped
silently. With `resize_pos_embed`, image and text position embeddings of another length are
resized as OpenCLIP's `resize_pos_embed` / `resize_text_pos_embed` do (torch's interpolate:
bicubic with antialias over the patch grid, class row kept; linear along the text positions).
"""
import fnmatch
import math
import re

import numpy as np

from synthclip_jax.export.openclip import BLOCK_RULES, TOP_RULES, _flatten
from synthclip_jax.export.torch_files import WeightsError

# (our tower, its OpenCLIP block prefix, its config group)
TOWERS = (("visual", "visual.transformer", "image"), ("text", "transformer", "text"))
IMAGE_POS, TEXT_POS = "visual.positional_embedding", "positional_embedding"


def dim_keys(key: str) -> tuple:
    """The config key that sets each dimension of source tensor `key` (None: fixed); OpenCLIP
    native keys and timm ViT keys (`visual.[trunk.]...`)."""
    tower = "image" if key.startswith("visual.") else "text"
    width, mlp = f"model.{tower}.width", f"model.{tower}.mlp_ratio"
    patch = "model.image.patch_size"
    table = (
        (r"visual\.conv1\.weight|.*patch_embed\.proj\.weight", (width, None, patch, patch)),
        (r"visual\.positional_embedding", ("data.image_size", width)),
        (r".*pos_embed", (None, "data.image_size", width)),
        (r".*cls_token", (None, None, width)),
        (r"positional_embedding", ("model.text.context_length", width)),
        (r"token_embedding\.weight", ("model.text.vocab_size", width)),
        (r"visual\.proj|text_projection|image_projection", (width, "model.embed_dim")),
        (r".*(mlp\.c_fc|mlp\.fc1)\.weight", (mlp, width)), (r".*(mlp\.c_fc|mlp\.fc1)\.bias", (mlp,)),
        (r".*(mlp\.c_proj|mlp\.fc2)\.weight", (width, mlp)),
        (r".*\.weight|.*\.bias|visual\.class_embedding", (width, width)),
    )
    for pattern, keys in table:
        if re.fullmatch(pattern, key):
            return keys
    return ()


def shape_error(key, name, source_shape, expected, resize_hint=False):
    keys = dim_keys(key)
    differing = [keys[d] if d < len(keys) else None for d in range(len(expected))
                 if d >= len(source_shape) or source_shape[d] != expected[d]]
    change = next((k for k in differing if k), None)
    fix = (f"set {change} to fit the source" if change else "the source is another architecture")
    if resize_hint and key in (IMAGE_POS, TEXT_POS):
        fix += " (or pass --resize-pos-embed to resize it)"
    return WeightsError(f"{name}: the source has shape {tuple(source_shape)}, the config expects "
                        f"{tuple(expected)}; {fix}")


def invert(fn, shape, value, key, name):
    """Our array of `shape` whose export by rule `fn` is `value`."""
    if shape == () and value.shape == (1,):  # a scalar saved 1-d (torch loads it the same)
        value = value.reshape(())
    if fn is None:
        if tuple(value.shape) != tuple(shape):
            raise shape_error(key, name, value.shape, shape, resize_hint=True)
        return np.asarray(value, np.float32)
    size = math.prod(shape)
    index = fn(np.arange(size, dtype=np.int64).reshape(shape))
    if tuple(index.shape) != tuple(value.shape):
        raise shape_error(key, name, value.shape, index.shape)
    out = np.empty(size, np.float32)
    out[index.reshape(-1)] = np.asarray(value, np.float32).reshape(-1)
    return out.reshape(shape)


def resize_image_pos(pos, num_tokens, name):
    """OpenCLIP's `resize_pos_embed`: class row kept, the patch grid resized (bicubic)."""
    import torch  # torch's interpolate is the definition being matched
    old = int(math.isqrt(pos.shape[0] - 1))
    new = int(math.isqrt(num_tokens - 1))
    if old * old != pos.shape[0] - 1 or new * new != num_tokens - 1:
        raise WeightsError(f"{name}: cannot resize {pos.shape[0]} position rows to "
                           f"{num_tokens}: not a class row plus a square grid")
    grid = torch.from_numpy(pos[1:].reshape(1, old, old, -1)).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic",
                                           antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new * new, -1).numpy()
    return np.concatenate([pos[:1], grid], axis=0)


def resize_text_pos(pos, length):
    """OpenCLIP's `resize_text_pos_embed`: linear interpolation along the positions."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(pos.T[None]))
    x = torch.nn.functional.interpolate(x, size=length, mode="linear", antialias=False,
                                        align_corners=False)
    return x[0].T.numpy().copy()


def resized(key, value, shape, name):
    if value.ndim != 2 or value.shape[1] != shape[1]:
        raise shape_error(key, name, value.shape, shape)
    if key == IMAGE_POS:
        return resize_image_pos(value, shape[0], name)
    return resize_text_pos(value, shape[0])


def matches(name, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def block_depth(keys, prefix) -> int:
    found = {int(m.group(1)) for k in keys
             if (m := re.match(re.escape(prefix) + r"\.resblocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def to_params(source: dict, abstract: dict, *, names=None, skip_keys=(), init_missing=(),
              init_params=None, resize_pos_embed=False, depths=None) -> dict:
    """Our pure-dict params (float32 numpy) from an OpenCLIP-layout `source` dict.

    abstract: our flat params {path: shape} (see `flat_shapes`); names: source key -> the name
    to print (the original key, e.g. HF's); depths: {tower group: config depth};
    init_params: () -> our initialised flat params, called only if `init_missing` is used.
    """
    names = names or {}
    name = lambda k: names.get(k, k)
    source = dict(source)
    flat, missing = {}, []
    for group, prefix in (("image", "visual.transformer"), ("text", "transformer")):
        have, want = block_depth(source, prefix), (depths or {}).get(group)
        if want is not None and have and have != want:
            raise WeightsError(f"{prefix}.resblocks: the source has {have} blocks, the config "
                               f"model.{group}.depth={want}; set model.{group}.depth={have}")

    def take(ours, key, fn, shape):
        if key not in source:
            missing.append((ours, key))
            return None
        value = source.pop(key)
        if resize_pos_embed and fn is None and key in (IMAGE_POS, TEXT_POS) \
                and tuple(value.shape) != tuple(shape):
            value = resized(key, value, shape, name(key))
        return invert(fn, shape, value, key, name(key))

    timm = timm_prefix(source)
    resnet = RESNET_TRUNK + "conv1.weight" in source
    if timm is not None:  # a timm image tower (SynthCLIP, OpenCLIP's timm tower)
        flat.update(take_timm(source, abstract, timm, name))
    elif resnet:  # OpenCLIP's timm tower holding a ResNet
        flat.update(take_resnet(source, abstract))
    elif "visual/conv1_bias" in abstract:  # OpenCLIP's native conv1 has no bias
        missing.append(("visual/conv1_bias", "visual.conv1.bias"))
    for ours, theirs, fn in TOP_RULES:
        if ours in abstract and ours not in flat:
            value = take(ours, theirs, fn, abstract[ours])
            if value is not None:
                flat[ours] = value
    for tower, prefix, _ in TOWERS:
        if tower == "visual" and (timm is not None or resnet):
            continue
        for ours, theirs, fn in BLOCK_RULES:
            path = f"{tower}/transformer/resblocks/{ours}"
            depth, *shape = abstract[path]
            rows = [take(path, f"{prefix}.resblocks.{i}.{theirs}", fn, tuple(shape))
                    for i in range(depth)]
            if all(r is not None for r in rows):
                flat[path] = np.stack(rows)
    unmapped = [p for p in abstract if p not in flat and not any(p == m for m, _ in missing)]
    if unmapped:  # a parameter of ours that no rule maps: the model grew, the tables did not
        raise WeightsError(f"parameters with no OpenCLIP mapping: {unmapped}")
    refused = [(ours, key) for ours, key in missing if not matches(ours, init_missing)]
    if refused:
        ours, key = refused[0]
        raise WeightsError(
            f"the source has no {name(key)} for our parameter {ours} ({len(refused)} missing "
            f"in all, e.g. {[name(k) for _, k in refused[:4]]}); fix the config (model.* keys) "
            f"or list it in --init-missing {ours!r} to keep its seeded init")
    if missing:
        init = init_params()
        for ours, _ in missing:
            flat[ours] = np.asarray(init[ours], np.float32)
    extra = sorted(k for k in source if not matches(name(k), skip_keys))
    if extra:
        raise WeightsError(
            f"the source has {len(extra)} tensors the config has no parameter for, e.g. "
            f"{[name(k) for k in extra[:4]]}; fix the config (model.* keys) or list them in "
            "--skip-keys to leave them out")
    return unflatten(flat)


def timm_prefix(source):
    """Where a timm ViT's keys start in `source` ('visual.' SynthCLIP, 'visual.trunk.' OpenCLIP's
    timm tower), or None."""
    for prefix in ("visual.trunk.", "visual."):
        if prefix + "cls_token" in source:
            return prefix
    return None


def take_timm(source, abstract, prefix, name) -> dict:
    """Our flat visual leaves (all but proj) from a timm ViT's keys, popped from `source`;
    the timm key table is `timm_vit.py`'s, checked key by key and shape by shape first."""
    from synthclip_jax.export.timm_vit import BLOCK_KEYS, TRUNK_KEYS, _to_timm, from_timm
    shapes = {k[len("visual/"):]: v for k, v in abstract.items() if k.startswith("visual/")}
    extra = [k for k in ("ln_pre/scale",) if k in shapes]
    if extra:
        raise WeightsError(f"{prefix}: a timm ViT has no ln_pre; set model.image.ln_pre=False")
    depth = shapes["transformer/resblocks/ln_1/scale"][0]
    have = len({int(m.group(1)) for k in source
                if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))})
    if have != depth:
        raise WeightsError(f"{prefix}blocks: the source has {have} blocks, the config "
                           f"model.image.depth={depth}; set model.image.depth={have}")
    expected = {}
    for ours, theirs, layout in TRUNK_KEYS:
        if ours in shapes:
            expected[prefix + theirs] = _to_timm(layout, np.zeros(shapes[ours], np.float32)).shape
        elif prefix + theirs not in source:
            expected[prefix + theirs] = None  # conv1_bias: neither side has one
    for ours, theirs, layout in BLOCK_KEYS:
        row = np.zeros(shapes[BLOCKS + ours][1:], np.float32)
        for i in range(depth):
            expected[f"{prefix}blocks.{i}.{theirs}"] = _to_timm(layout, row).shape
    for key, shape in expected.items():
        if shape is None:
            continue
        if key not in source:
            raise WeightsError(f"the source has no {name(key)} (a timm ViT key); fix the config "
                               "(model.image.*)")
        if tuple(source[key].shape) != tuple(shape):
            raise shape_error(key, name(key), source[key].shape, shape)
    try:
        visual = from_timm(source, shapes, prefix)
    except ValueError as error:  # a non-zero patch bias for a tower without one
        raise WeightsError(f"{error}; set model.image.patch_bias=True") from None
    for key in expected:
        source.pop(key, None)
    if prefix + "patch_embed.proj.bias" in source:  # the zero bias from_timm accepted
        source.pop(prefix + "patch_embed.proj.bias")
    return {f"visual/{k}": v for k, v in visual.items()}


BLOCKS = "transformer/resblocks/"
RESNET_TRUNK = "visual.trunk."  # OpenCLIP's TimmModel: timm's ResNet keys (torchvision's)


def take_resnet(source, abstract) -> dict:
    """Our flat visual leaves (all but proj) from a timm ResNet trunk's keys, popped from
    `source` (its BatchNorms' unused num_batches_tracked too)."""
    from synthclip_jax.export.torchvision_resnet import from_torchvision, to_torchvision
    shapes = {k[len("visual/"):]: v for k, v in abstract.items() if k.startswith("visual/")}
    if "conv1/kernel" not in shapes:
        raise WeightsError(f"{RESNET_TRUNK}*: the source's image tower is a ResNet; set "
                           "model.image.tower=resnet (and resnet_depth)")
    try:
        visual = from_torchvision(source, shapes, prefix=RESNET_TRUNK)
    except (KeyError, ValueError) as error:  # names the key, both shapes and the config key
        raise WeightsError(error.args[0]) from None
    for key in to_torchvision(visual, prefix=RESNET_TRUNK):
        source.pop(key, None)
    return {f"visual/{k}": v for k, v in visual.items()}


def unflatten(flat: dict) -> dict:
    tree = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def like(tree, flat: dict) -> dict:
    """`flat` ('/'-paths) nested as `tree`, whose keys may be ints (an `nnx.List`'s entries,
    e.g. the ResNet's blocks) where `unflatten` would make strings."""
    import jax
    return jax.tree_util.tree_map_with_path(
        lambda path, _: flat["/".join(str(k.key) for k in path)], tree)


def flat_shapes(abstract_params) -> dict:
    """{path: shape} of a pure dict of arrays or ShapeDtypeStructs."""
    return {k: tuple(v.shape) for k, v in _flatten(abstract_params).items()}
