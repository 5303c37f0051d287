"""ResNet image tower (`model.image.tower='resnet'`), torchvision's architecture exactly.

conv1 7x7/2 (no bias) -> bn1 -> ReLU -> max-pool 3x3/2 (pad 1) -> layer1..layer4 -> global
average pool -> projection `proj` (no bias; the tower's own projection, as the ViT's, and with
`model.projection='mlp'` the square first Linear of simple-clip's head, models/heads.py).
Blocks are torchvision's `BasicBlock` (ResNet-18/34) and `Bottleneck` v1.5 (ResNet-50/101/152:
the stride on the 3x3 conv), with a conv1x1 + BatchNorm `downsample` where the shape changes.
`model.image.resnet_width` is the stem width (torchvision: 64; stage i has width * 2**i planes),
small values give tiny test towers. Images are NHWC; BatchNorm is models/batch_norm.py.

Names follow torchvision's state_dict, so the converter (export/torchvision_resnet.py) is a
mechanical mapping of pure-dict paths under `visual/`:

  ours (pure-dict path)              torchvision key                  layout
  conv1/kernel                       conv1.weight                     HWIO <-> OIHW
  bn1/scale, bn1/bias                bn1.weight, bn1.bias
  bn1/mean, bn1/var                  bn1.running_mean, .running_var   (nnx.BatchStat)
  layer{s}/{i}/conv{k}/kernel        layer{s}.{i}.conv{k}.weight      HWIO <-> OIHW
  layer{s}/{i}/bn{k}/...             layer{s}.{i}.bn{k}....
  layer{s}/{i}/downsample/0/kernel   layer{s}.{i}.downsample.0.weight HWIO <-> OIHW
  layer{s}/{i}/downsample/1/...      layer{s}.{i}.downsample.1....
  proj                               (none: torchvision's `fc` is the classifier we drop)

Sharding: conv kernels carry the logical axes (None, None, None, 'embed') (output channels,
as the ViT's patch conv), so FSDP stores them split over 'fsdp' and gathers them for compute,
like every other weight; activations are constrained to the batch split (sharding.py).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.config.choices import RESNET_DEPTHS
from synthclip_jax.models import layers
from synthclip_jax.models.batch_norm import BatchNorm

# depth -> (block, blocks per stage), as torchvision's resnet18 ... resnet152
LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
           152: ("bottleneck", (3, 8, 36, 3))}
EXPANSION = {"basic": 1, "bottleneck": 4}
assert tuple(LAYOUTS) == RESNET_DEPTHS


def feature_width(image_cfg) -> int:
    """The pooled feature width (torchvision's `fc.in_features`: 512 for ResNet-18, 2048 for 50)."""
    block, _ = LAYOUTS[image_cfg.resnet_depth]
    return image_cfg.resnet_width * 8 * EXPANSION[block]


def _activation(x):
    return sharding.constrain(x, ("batch", None, None, "embed"))


class Conv(nnx.Module):
    """torch `nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)`, NHWC / HWIO."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, *, dtype):
        # drawn by `init_kernels` for the whole tower at once
        self.kernel = layers.const_param((k, k, cin, cout), (None, None, None, "embed"), 0.0,
                                         kind="weight")
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x):
        pad = self.kernel.shape[0] // 2
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), layers.read(self.kernel, self.dtype), (self.stride,) * 2,
            ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def init_kernels(tower: nnx.Module, rngs: nnx.Rngs):
    """torchvision's conv init, kaiming_normal_(mode='fan_out', nonlinearity='relu'), for every
    conv of `tower` from ONE normal draw: a draw per kernel is a separate random-bits
    computation for XLA to compile per kernel (ResNet-18: 20, ResNet-50: 53), which made the
    jitted init of a ResNet-18 compile 5-10x slower on this CPU (measured ad hoc)."""
    convs = [m for _, m in nnx.iter_modules(tower) if isinstance(m, Conv)]
    noise = jax.random.normal(rngs.params(), (sum(c.kernel.size for c in convs),), jnp.float32)
    offset = 0
    for conv in convs:
        k, _, _, cout = shape = conv.kernel.shape
        size = conv.kernel.size
        conv.kernel[...] = (2.0 / (cout * k * k)) ** 0.5 * noise[offset:offset + size].reshape(shape)
        offset += size


def _downsample(cin, cout, stride, dtype):
    if stride == 1 and cin == cout:
        return None
    # a list, so that the paths are torchvision's Sequential indices: downsample/0, downsample/1
    return nnx.List([Conv(cin, cout, 1, stride, dtype=dtype), BatchNorm(cout)])


def _shortcut(downsample, x):
    return x if downsample is None else downsample[1](downsample[0](x))


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, planes: int, stride: int, *, dtype):
        self.conv1 = Conv(cin, planes, 3, stride, dtype=dtype)
        self.bn1 = BatchNorm(planes)
        self.conv2 = Conv(planes, planes, 3, 1, dtype=dtype)
        self.bn2 = BatchNorm(planes)
        self.downsample = _downsample(cin, planes, stride, dtype)

    def __call__(self, x):
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return _activation(jax.nn.relu(h + _shortcut(self.downsample, x)))


class Bottleneck(nnx.Module):
    def __init__(self, cin: int, planes: int, stride: int, *, dtype):
        out = planes * EXPANSION["bottleneck"]
        self.conv1 = Conv(cin, planes, 1, 1, dtype=dtype)
        self.bn1 = BatchNorm(planes)
        self.conv2 = Conv(planes, planes, 3, stride, dtype=dtype)  # v1.5: stride here
        self.bn2 = BatchNorm(planes)
        self.conv3 = Conv(planes, out, 1, 1, dtype=dtype)
        self.bn3 = BatchNorm(out)
        self.downsample = _downsample(cin, out, stride, dtype)

    def __call__(self, x):
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = jax.nn.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return _activation(jax.nn.relu(h + _shortcut(self.downsample, x)))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nnx.Module):
    def __init__(self, cfg, *, embed_dim: int, dtype, rngs: nnx.Rngs):
        """`cfg`: model.image (resnet_depth, resnet_width)."""
        if cfg.resnet_depth not in LAYOUTS:
            raise ValueError(f"model.image.resnet_depth={cfg.resnet_depth!r}; choose one of "
                             f"{RESNET_DEPTHS}")
        block, stages = LAYOUTS[cfg.resnet_depth]
        width = cfg.resnet_width
        self.conv1 = Conv(3, width, 7, 2, dtype=dtype)
        self.bn1 = BatchNorm(width)
        cin = width
        for s, count in enumerate(stages):
            planes = width * 2**s
            stage = []
            for i in range(count):
                stride = 2 if s > 0 and i == 0 else 1
                stage.append(BLOCKS[block](cin, planes, stride, dtype=dtype))
                cin = planes * EXPANSION[block]
            setattr(self, f"layer{s + 1}", nnx.List(stage))
        self.num_stages = len(stages)
        init_kernels(self, rngs)
        self.proj = layers.normal_param(rngs, (cin, embed_dim), ("embed", None), cin**-0.5,
                                        kind="weight")
        self.dtype = dtype

    def __call__(self, images):
        """images: (B, H, W, 3) float, already normalised -> (B, embed_dim) unnormalised."""
        x = jax.nn.relu(self.bn1(self.conv1(_activation(images))))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s in range(self.num_stages):
            for block in getattr(self, f"layer{s + 1}"):
                x = block(x)
        pooled = x.astype(jnp.float32).mean(axis=(1, 2)).astype(self.dtype)
        return sharding.constrain(pooled @ layers.read(self.proj, self.dtype), ("batch", None))
