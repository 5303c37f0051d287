"""Text tower, laid out as OpenCLIP's `TextTransformer`.

tokens -> token + positional embedding -> transformer (causal, or bidirectional as SigLIP/CLIPS)
-> ln_final -> pool -> projection (`x @ W`, no bias); `final_ln_after_pool` pools first (OpenCLIP's
flag; it changes the function only for 'mean'). Pooling:
  'argmax': the EOT token, found as the largest token id (OpenAI BPE: EOT 49407 is the max id);
  'last':   the last position (big_vision / SigLIP 'sticky EOS', CLIPS class token);
  'mean':   mean over non-padding tokens (id != 0); OpenCLIP cannot express it.
No padding mask in attention, as OpenCLIP and big_vision.
"""
import jax.numpy as jnp
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.config.choices import TEXT_POOL_TYPES as POOL_TYPES
from synthclip_jax.data.tokenizer import PAD_ID
from synthclip_jax.models import layers


class TextTransformer(nnx.Module):
    def __init__(self, cfg, *, embed_dim, eps, act, dtype, remat, rngs: nnx.Rngs,
                 attention="xla"):
        """`cfg`: model.text; `eps`, `act`: this tower's (models/tower_config.py)."""
        if cfg.pool_type not in POOL_TYPES:
            raise ValueError(f"model.text.pool_type={cfg.pool_type!r}; choose one of {POOL_TYPES}")
        width = cfg.width
        self.token_embedding = layers.normal_param(
            rngs, (cfg.vocab_size, width), ("vocab", "embed"), 0.02, kind="weight")
        self.positional_embedding = layers.normal_param(
            rngs, (cfg.context_length, width), (None, "embed"), 0.01, kind="embedding")
        self.transformer = layers.Transformer(
            width, cfg.depth, cfg.heads, cfg.mlp_ratio, eps=eps, act=act, dtype=dtype, remat=remat,
            rngs=rngs, attention=attention)
        self.ln_final = layers.LayerNorm(width, eps)
        self.text_projection = layers.normal_param(rngs, (width, embed_dim), ("embed", None),
                                                   width**-0.5, kind="weight")
        self.causal = cfg.causal
        self.pool_type = cfg.pool_type
        self.final_ln_after_pool = cfg.get("final_ln_after_pool", False)  # absent in old configs
        self.dtype = dtype

    def __call__(self, tokens):
        """tokens: (B, L <= context_length) int32 -> (B, embed_dim) unnormalised."""
        return self.pool(self.tokens(tokens), tokens)

    def tokens(self, tokens):
        """The output tokens, (B, context_length, width) after ln_final: what `pool` reads, and
        the CLIPS captioner's web-caption prefix."""
        # Gathered like every weight. Looking it up where it is stored would spare the V x D
        # temporary but makes XLA replicate the B x S x D cotangent of the lookup over the whole
        # global batch (its "involuntary full rematerialization"), far larger at pod batch sizes.
        x = jnp.take(layers.read(self.token_embedding), tokens, axis=0)
        # A shorter row (CLIPA's short training text, data.train_context_length) reads the
        # first positions of the table, as OpenCLIP's text tower does (tests/test_stages.py).
        x = x + layers.read(self.positional_embedding)[:tokens.shape[1]]
        x = sharding.constrain(x, ("batch", "seq", "embed"))
        x = self.transformer(x.astype(self.dtype), causal=self.causal)
        # final_ln_after_pool: the norm follows the pooling (in `pool`)
        return x if self.final_ln_after_pool else self.ln_final(x)

    def pool(self, x, tokens):
        """Output tokens (and the token ids, for argmax and mean pooling) -> (B, embed_dim)."""
        if self.pool_type == "argmax":
            pooled = jnp.take_along_axis(x, tokens.argmax(-1)[:, None, None], axis=1)[:, 0]
        elif self.pool_type == "last":
            pooled = x[:, -1]
        else:
            mask = (tokens != PAD_ID)[..., None].astype(x.dtype)
            pooled = (x * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
        if self.final_ln_after_pool:
            pooled = self.ln_final(pooled)
        return sharding.constrain(pooled @ layers.read(self.text_projection, self.dtype),
                                  ("batch", None))
