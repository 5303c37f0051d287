"""Image classifier (`train.task='classify'`): the image tower (ViT or ResNet) with a linear
class head, the Scaling-laws seed's supervised models (timm `VisionTransformer` classifiers).

The tower's own projection `visual/proj` (width, num_classes) is the head's weight and
`head_bias` its bias, so a timm ViT classifier maps one to one: `head.weight` = proj.T,
`head.bias` = head_bias (export/load_timm.py); with 'tok' pooling after the final norm this is
timm's `global_pool='token'` forward (x = norm(x); head(x[:, 0])).
"""
import typing

import jax.numpy as jnp
from flax import nnx

from synthclip_jax.models import layers
from synthclip_jax.models.resnet import ResNet
from synthclip_jax.models.tower_config import tower_option
from synthclip_jax.models.vit import VisionTransformer


class ClassifyOutputs(typing.NamedTuple):
    logits: jnp.ndarray  # (B, num_classes) float32
    labels: jnp.ndarray  # (B,) int32 class indices


class Classifier(nnx.Module):
    def __init__(self, cfg, *, image_size: int, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)  # a choices.DTYPES name, checked at the door
        classes = cfg.num_classes
        if cfg.image.get("tower", "vit") == "resnet":
            self.visual = ResNet(cfg.image, embed_dim=classes, dtype=dtype, rngs=rngs)
        else:
            act = tower_option(cfg, "image", "activation")
            self.visual = VisionTransformer(
                cfg.image, image_size=image_size, embed_dim=classes,
                eps=tower_option(cfg, "image", "layernorm_eps"), act=layers.ACTIVATIONS[act],
                dtype=dtype, remat=layers.remat_policy(cfg.remat, cfg.remat_policy), rngs=rngs,
                attention=cfg.attention_impl)
        # as timm's head: zero-initialised bias (its weight is the tower's proj)
        self.head_bias = layers.const_param((classes,), (None,), 0.0, kind="bias")

    def logits(self, images, patch_keep=None):
        """images: (B, H, W, 3) normalised -> (B, num_classes) float32; `patch_keep`: the train
        step's patch dropout (models/patch_dropout.py), None in evaluation."""
        features = self.visual(images) if patch_keep is None else self.visual(images, patch_keep)
        return features.astype(jnp.float32) + self.head_bias[...]

    def encode_image(self, images):
        """The evaluation encoder's image method (evaluate/encode.py): here the logits."""
        return self.logits(images)

    def __call__(self, images, labels, patch_keep=None) -> ClassifyOutputs:
        return ClassifyOutputs(self.logits(images, patch_keep), labels)

    def clamp_logit_scale(self, max_log: float):
        """No temperature: the train step's clamp is a no-op here."""

    has_logit_bias = False
