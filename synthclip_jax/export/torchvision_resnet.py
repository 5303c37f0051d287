"""Our ResNet image tower (models/resnet.py) <-> torchvision's `ResNet` state_dict, both ways.
No torch: numpy arrays in and out.

Our leaves are the `nnx.to_pure_dict` paths under `visual/`, '/'-joined (`openclip._flatten`).
The module paths are torchvision's, so the map is per leaf name: a conv `kernel` (HWIO) is
`weight` (OIHW); a BatchNorm's `scale`, `bias`, `mean`, `var` are `weight`, `bias`,
`running_mean`, `running_var`. torchvision's `bn.num_batches_tracked` (used only when
momentum=None, never by torchvision's ResNets) is written as 0 and ignored on the way in; its
classifier `fc` has no counterpart (our `proj` is the CLIP projection) and is left out.
"""
import numpy as np

# our leaf name -> torchvision's
LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
          "var": "running_var"}
NOT_TRUNK = ("proj",)  # our leaves past the pooled features (the projection)


def to_torchvision(visual: dict, prefix: str = "") -> dict:
    """Our flat `visual/...`-relative leaves -> torchvision state_dict (keys `prefix + name`),
    without `fc.*`; leaves in NOT_TRUNK are left to the caller."""
    out = {}
    for path, value in visual.items():
        if path in NOT_TRUNK:
            continue
        *modules, leaf = path.split("/")
        if leaf not in LEAVES:
            raise ValueError(f"visual/{path}: no torchvision name for leaf {leaf!r}")
        module = prefix + ".".join(modules)
        value = np.asarray(value)
        out[f"{module}.{LEAVES[leaf]}"] = value.transpose(3, 2, 0, 1) if leaf == "kernel" else value
        if leaf == "mean":
            out[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def from_torchvision(state: dict, shapes: dict, prefix: str = "") -> dict:
    """torchvision state_dict -> our flat `visual/...`-relative trunk leaves, for the leaves
    of `shapes` (our leaf -> shape) outside NOT_TRUNK; a missing key or a shape that differs is
    an error naming it."""
    out = {}
    for path, shape in shapes.items():
        if path in NOT_TRUNK:
            continue
        *modules, leaf = path.split("/")
        key = f"{prefix}{'.'.join(modules)}.{LEAVES[leaf]}"
        if key not in state:
            raise KeyError(f"{key} (for visual/{path}) is not in the torchvision state_dict")
        value = np.asarray(state[key], np.float32)
        if leaf == "kernel":
            value = value.transpose(2, 3, 1, 0)
        if value.shape != tuple(shape):
            raise ValueError(f"{key}: shape {value.shape} (as ours) but visual/{path} is "
                             f"{tuple(shape)}: check model.image.resnet_depth / resnet_width")
        out[path] = value
    return out
