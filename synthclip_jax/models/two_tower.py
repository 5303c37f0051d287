"""CLIP / SigLIP two-tower model. Its parameters map one-to-one onto OpenCLIP's `CLIP`: the
map is the rule tables of `synthclip_jax/export/openclip.py`.

Features are L2-normalised in float32. `logit_scale` is stored as a log (as OpenCLIP); the
SigLIP loss also uses `logit_bias`, created only when `model.logit_bias_init` is set.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from synthclip_jax.losses import ContrastiveOutputs
from synthclip_jax.data.text_tokenizer import SpecialIds, special_ids_of
from synthclip_jax.models import layers
from synthclip_jax.models.heads import apply_head, projection_heads
from synthclip_jax.models.resnet import ResNet, feature_width
from synthclip_jax.models.captioner import Captioner
from synthclip_jax.models.text import TextTransformer
from synthclip_jax.models.tower_config import tower_key, tower_option
from synthclip_jax.models.vit import VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def l2_normalize(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


class TwoTower(nnx.Module):
    def __init__(self, cfg, *, image_size: int, rngs: nnx.Rngs):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype={cfg.dtype!r}; choose one of {sorted(DTYPES)}")
        common = dict(embed_dim=cfg.embed_dim, dtype=DTYPES[cfg.dtype],
                      remat=layers.remat_policy(cfg.remat, cfg.remat_policy), rngs=rngs,
                      attention=cfg.attention_impl)

        def tower(name):  # each tower's LayerNorm eps and activation
            act = tower_option(cfg, name, "activation")
            if act not in layers.ACTIVATIONS:
                raise ValueError(f"{tower_key(cfg, name, 'activation')}={act!r}; choose one of "
                                 f"{sorted(layers.ACTIVATIONS)}")
            return dict(eps=tower_option(cfg, name, "layernorm_eps"), act=layers.ACTIVATIONS[act])

        # 'mlp' (simple-clip): the tower's own projection is the first Linear(d, d), the head
        # (ReLU, then Linear(d, embed_dim)) follows.
        mlp = projection_heads(cfg)
        if cfg.image.get("tower", "vit") == "resnet":  # absent in configs from before ResNets
            image_width = feature_width(cfg.image)
            self.visual = ResNet(cfg.image, dtype=common["dtype"], rngs=rngs,
                                 **{"embed_dim": cfg.embed_dim, **mlp.tower_dim(image_width)})
        else:
            image_width = cfg.image.width
            self.visual = VisionTransformer(cfg.image, image_size=image_size, **tower("image"),
                                            **{**common, **mlp.tower_dim(image_width)})
        self.text = TextTransformer(cfg.text, **tower("text"),
                                    **{**common, **mlp.tower_dim(cfg.text.width)})
        self.visual_head = mlp.head(image_width, cfg.embed_dim, rngs)
        self.text_head = mlp.head(cfg.text.width, cfg.embed_dim, rngs)
        self.logit_scale_min = cfg.get("logit_scale_min", 0.0)  # absent in old configs
        self.logit_scale = layers.const_param((), (), cfg.logit_scale_init, kind="scalar")
        self.logit_bias = (None if cfg.logit_bias_init is None
                           else layers.const_param((), (), cfg.logit_bias_init, kind="scalar"))
        captioner = cfg.get("captioner")  # absent in configs from before CLIPS
        self.captioner = (Captioner(captioner, image_width=cfg.image.width,
                                    text_width=cfg.text.width, vocab_size=cfg.text.vocab_size,
                                    **tower("text"),
                                    **{k: v for k, v in common.items() if k != "embed_dim"})
                          if captioner is not None and captioner.enabled else None)
        # the captioner's start/end/pad: those of the tokenizer that made its targets
        self.caption_ids = special_ids_of(cfg.text)

    def encode_image(self, images, patch_keep=None):
        """`patch_keep`: the train step's patch dropout (models/patch_dropout.py); None (eval,
        export) = every patch."""
        features = self.visual(images) if patch_keep is None else self.visual(images, patch_keep)
        return l2_normalize(apply_head(self.visual_head, features))

    def encode_text(self, tokens):
        return l2_normalize(apply_head(self.text_head, self.text(tokens)))

    def contrastive_scalars(self):
        """(logit_scale (log), logit_bias or 0): what the loss takes besides the features, and
        the only way the train step reaches these parameters (a gradient through this method
        lands on them whatever they are named)."""
        bias = jnp.zeros((), jnp.float32) if self.logit_bias is None else self.logit_bias[...]
        return self.logit_scale[...], bias

    @property
    def has_logit_bias(self) -> bool:
        return self.logit_bias is not None

    def clamp_logit_scale(self, max_log: float):
        """As CLIP/OpenCLIP after every update: the temperature's log to
        [model.logit_scale_min, max_log] (CLIP: [0, ln 100]; SimCLIP: [-ln 100, ln 100])."""
        self.logit_scale[...] = jnp.clip(self.logit_scale[...], self.logit_scale_min, max_log)

    def clips_outputs(self, images, web_text, caption_inputs=None, patch_keep=None):
        """CLIPS: the image/web-caption outputs, and the captioner's logits for the full
        caption (`caption_inputs`: SOT + the caption, models/captioner.py) when it has one; the
        towers run once, their tokens feeding both (with patch dropout, the captioner sees the
        kept patches, as CLIPA's)."""
        image_tokens = self.visual.tokens(images, patch_keep)
        web_tokens = self.text.tokens(web_text)
        outputs = ContrastiveOutputs(
            l2_normalize(apply_head(self.visual_head, self.visual.pool(image_tokens))),
            l2_normalize(apply_head(self.text_head, self.text.pool(web_tokens, web_text))),
            *self.contrastive_scalars())
        if self.captioner is None or caption_inputs is None:
            return outputs, None
        return outputs, self.captioner(image_tokens, web_tokens, caption_inputs)

    def caption(self, images, web_text, ids: SpecialIds | None = None):
        """Greedy captions (the tokens after the start token, models/captioner.py) of images,
        given their web captions (e.g. the tokenizer's row of "" for none); `ids` (start, end,
        pad) default to those of the config's `model.text.tokenizer`."""
        start, end, pad = ids or self.caption_ids
        return self.captioner.greedy(self.visual.tokens(images), self.text.tokens(web_text),
                                     start, end, pad)

    def __call__(self, images, tokens, patch_keep=None) -> ContrastiveOutputs:
        return ContrastiveOutputs(self.encode_image(images, patch_keep), self.encode_text(tokens),
                                  *self.contrastive_scalars())


def build_model(config, seed: int):
    """The model of a config (`config.model`, image size from `config.data.image_size`): the
    two towers, or with `train.task='classify'` the image classifier (models/classifier.py)."""
    if config.train.get("task", "contrastive") == "classify":  # .get: configs from before
        from synthclip_jax.models.classifier import Classifier
        return Classifier(config.model, image_size=config.data.image_size,
                          rngs=nnx.Rngs(params=seed))
    return TwoTower(config.model, image_size=config.data.image_size, rngs=nnx.Rngs(params=seed))
