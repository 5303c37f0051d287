"""A timm `VisionTransformer` classifier state dict -> our classifier (`train.task='classify'`):
the `--format timm --timm-model NAME` import of the Scaling-laws seed's supervised checkpoints
(google-research/syn-rep-learn `Scaling/supervised`: timm `vit_base_patch16_224`, class-token
pooling after the final norm, LayerNorm eps 1e-6, a 1000-class head, loaded with strict=True).

Strict as the seed's `load_state_dict(strict=True)`: every key of the file is used (the trunk
through `timm_vit.py`'s table, `head.weight` -> `visual/proj` transposed, `head.bias` ->
`head_bias`), and a key nobody maps (`fc_norm.*` of a mean-pooling model, `reg_token`, ...)
stops the import naming it. The architecture comes from timm's model name, since a state dict
cannot show the head count; the class count is read off `head.weight`. The derived config
carries the seed's preprocessing: Normalize(0.5, 0.5) at the model's image size.
"""
import numpy as np

from synthclip_jax.config.base import base
from synthclip_jax.export import fit
from synthclip_jax.export.timm_vit import TIMM_LAYERNORM_EPS, TIMM_VITS, timm_model_name
from synthclip_jax.export.torch_files import WeightsError, read_weights

HEAD = ("head.weight", "head.bias")
SEED_MEAN = SEED_STD = (0.5, 0.5, 0.5)  # the seed's transforms.Normalize(0.5, 0.5)


def is_timm_vit(tensors) -> bool:
    return "cls_token" in tensors and "patch_embed.proj.weight" in tensors


def vit_config(name: str, num_classes: int):
    """A base config holding timm's `name` as a classifier with `num_classes` classes."""
    if name not in TIMM_VITS:
        raise WeightsError(f"--timm-model {name!r}: not a known timm ViT; choose one of "
                           f"{sorted(TIMM_VITS)}")
    width, depth, heads, patch, mlp_ratio, size = TIMM_VITS[name]
    config = base()
    config.train.task = "classify"
    config.model.num_classes = int(num_classes)
    config.model.layernorm_eps, config.model.activation = TIMM_LAYERNORM_EPS, "gelu"
    config.model.image.update(width=width, depth=depth, heads=heads, patch_size=patch,
                              mlp_ratio=mlp_ratio, pool_type="tok", ln_pre=False,
                              patch_bias=True, final_ln_after_pool=False, tower="vit")
    config.data.image_size = size
    config.data.mean, config.data.std = SEED_MEAN, SEED_STD
    return config


def import_timm_vit(src, name, config=None):
    """(config, params): our classifier's pure-dict params (float32 numpy) from the timm ViT
    classifier state dict at `src`; `config` (optional) must describe timm's `name`."""
    tensors, _ = read_weights(src)
    missing = [k for k in HEAD if k not in tensors]
    if missing:
        raise WeightsError(f"{src}: no {missing[0]}: not a timm ViT classifier state dict "
                           "(timm.create_model(NAME, num_classes=N).state_dict())")
    classes = int(tensors["head.weight"].shape[0])
    if config is None:
        config = vit_config(name, classes)
    else:
        if config.train.get("task") != "classify":
            raise WeightsError(f"{src}: a timm classifier needs train.task='classify' in "
                               "--config; set train.task=classify")
        if name is not None and timm_model_name(config.model.image,
                                                config.data.image_size) != name:
            raise WeightsError(f"--config describes no {name} (model.image.* and "
                               f"data.image_size); set them as {TIMM_VITS.get(name)}")
        if config.model.num_classes != classes:
            raise WeightsError(f"{src}: head.weight has {classes} classes, the config "
                               f"model.num_classes={config.model.num_classes}; set "
                               f"model.num_classes={classes}")
    from flax import nnx
    from synthclip_jax.models.two_tower import build_model
    abstract = fit.flat_shapes(nnx.to_pure_dict(nnx.state(
        nnx.eval_shape(lambda: build_model(config, 0)))))
    source = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
    visual = fit.take_timm(source, abstract, "", str)  # pops every trunk key it used
    weight, bias = source.pop("head.weight"), source.pop("head.bias")
    if weight.T.shape != abstract["visual/proj"]:
        raise WeightsError(f"{src}: head.weight has shape {weight.shape}, the model's head "
                           f"{abstract['visual/proj'][::-1]}; set model.image.width")
    if source:
        raise WeightsError(f"{src}: {len(source)} keys our classifier has no place for, e.g. "
                           f"{sorted(source)[:4]} (strict, as the seed's load_state_dict); "
                           "only class-token ViTs without fc_norm are supported")
    flat = {**visual, "visual/proj": weight.T, "head_bias": bias}
    return config, fit.unflatten(flat)
