"""An ImageNet-pretrained ResNet (torchvision or timm state dict) -> our ResNet image tower: the
`--format torchvision|timm` import, simple-clip's starting point.

Both libraries' ResNets have the same state_dict keys (`conv1.weight`, `bn1.running_mean`,
`layer{s}.{i}.conv{k}.weight`, `...downsample.{0,1}...`, classifier `fc.*`): timm's `resnet50`
(`resnet50.a1_in1k` and the other tags) is torchvision's architecture (v1.5, stride on the 3x3)
under the same names. The trunk goes through `torchvision_resnet.from_torchvision`, running
statistics included (they are what eval mode normalises with). The classifier `fc` is dropped
(it predicts ImageNet classes; our `visual/proj` is the CLIP projection) and said so in the
import's notes. Everything that is not the trunk (the image projection, the text tower, heads,
logit scale/bias) keeps the config's seeded init, so the model must come from `--config`: an
ImageNet ResNet carries no CLIP config. A source of another depth or stem width, or with a key
nobody maps, is refused naming it.
"""
import fnmatch
import os
import re

import numpy as np

from synthclip_jax.export import fit
from synthclip_jax.export.torch_files import PICKLE_SUFFIXES, WeightsError, read_weights
from synthclip_jax.export.torchvision_resnet import NOT_TRUNK, from_torchvision, to_torchvision

FORMATS = ("torchvision", "timm")
CLASSIFIER = "fc."  # the ImageNet classifier: no counterpart in a CLIP tower
VISUAL = "visual/"
MARKERS = ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight")


def is_resnet(path) -> bool:
    """A weights file whose top-level keys are a torchvision/timm ResNet's (for init_from)."""
    path = os.fspath(path)
    if not os.path.isfile(path) or not path.endswith(PICKLE_SUFFIXES + (".safetensors",)):
        return False
    tensors, _ = read_weights(path)
    return all(k in tensors for k in MARKERS)


def source_layout(tensors) -> tuple:
    """(block kind, blocks per stage, stem width) read off the keys and shapes."""
    stages = tuple(len({m.group(1) for k in tensors
                        if (m := re.match(rf"layer{s}\.(\d+)\.", k))}) for s in (1, 2, 3, 4))
    block = "bottleneck" if "layer1.0.conv3.weight" in tensors else "basic"
    return block, stages, int(tensors["conv1.weight"].shape[0])


def check_layout(tensors, image_cfg, src):
    """The source's depth and stem width are the config's, or an error naming the key to set."""
    from synthclip_jax.models.resnet import LAYOUTS
    missing = [k for k in MARKERS if k not in tensors]
    if missing:
        raise WeightsError(f"{src}: not a torchvision/timm ResNet state dict: no {missing} "
                           f"(keys: {sorted(tensors)[:6]} ...)")
    block, stages, width = source_layout(tensors)
    depth = next((d for d, layout in LAYOUTS.items() if layout == (block, stages)), None)
    if depth is None:
        raise WeightsError(f"{src}: a ResNet with {block} blocks {stages} per stage, which is "
                           f"none of torchvision's {sorted(LAYOUTS)}")
    if depth != image_cfg.resnet_depth:
        raise WeightsError(f"{src}: the source is a ResNet-{depth} ({block} blocks {stages}), "
                           f"the config model.image.resnet_depth={image_cfg.resnet_depth}; set "
                           f"model.image.resnet_depth={depth}")
    if width != image_cfg.resnet_width:
        raise WeightsError(f"{src}: conv1.weight has {width} output channels, the config "
                           f"model.image.resnet_width={image_cfg.resnet_width}; set "
                           f"model.image.resnet_width={width}")


def import_resnet(src, config, seeded, *, skip_keys=(), notes=None) -> dict:
    """Our pure-dict params (float32 numpy) for `config`: the image trunk from the ResNet state
    dict at `src`, everything else from `seeded()` (the config's seeded params, built only once
    the source fits). `notes` (a list) receives what was left out on purpose (the classifier)."""
    if config.model.image.get("tower", "vit") != "resnet":
        raise WeightsError(f"{src}: a ResNet trunk needs model.image.tower='resnet', the config "
                           f"has {config.model.image.get('tower', 'vit')!r}; set "
                           "model.image.tower=resnet (and resnet_depth)")
    tensors, _ = read_weights(src)
    check_layout(tensors, config.model.image, src)
    tree = seeded()
    init = fit._flatten(tree)
    shapes = {k[len(VISUAL):]: v.shape for k, v in init.items() if k.startswith(VISUAL)}
    try:
        trunk = from_torchvision(tensors, shapes)
    except (KeyError, ValueError) as error:  # the converter names the key and both shapes
        raise WeightsError(f"{src}: {error.args[0]}") from None
    consumed = set(to_torchvision(trunk))  # with each BatchNorm's unused num_batches_tracked
    classifier = sorted(k for k in tensors if k.startswith(CLASSIFIER))
    extra = sorted(k for k in tensors if k not in consumed and k not in classifier
                   and not any(fnmatch.fnmatchcase(k, p) for p in skip_keys))
    if extra:
        raise WeightsError(f"{src}: {len(extra)} tensors our ResNet has no place for, e.g. "
                           f"{extra[:4]}; fix model.image.* or list them in --skip-keys")
    if notes is not None and classifier:
        classes = tensors[classifier[0]].shape[0]
        notes.append(f"dropped the ImageNet classifier {classifier} ({classes} classes); "
                     f"{VISUAL}{NOT_TRUNK[0]}, the text tower and the heads keep the config's "
                     f"seeded init (seed {config.seed})")
    params = {k: np.asarray(v, np.float32) for k, v in init.items()}
    return fit.like(tree, {**params, **{VISUAL + k: v for k, v in trunk.items()}})
