"""The CLIPS captioner: a decoder beside the two towers that writes the full synthetic caption of
an image, given the image and its web caption (CLIPS, REFERENCE.md section 4.3).

Sequence = [image tokens | web-caption tokens | queries]:
  * image tokens: the ViT's output tokens (class token + patches, after ln_post), projected to
    the decoder width;
  * web-caption tokens: the text tower's output tokens for the web caption (after ln_final, all
    `context_length` positions; CLIPS drops the last one, the [CLS] slot of its WordPiece
    layout; we keep it, so both tokenizers' rows feed the decoder alike), projected to the
    decoder width;
  * queries: `model.captioner.num_queries` learnable vectors (CLIPS: 128). Query q also carries
    the embedding of target token q (the start token first: teacher forcing) and predicts
    token q + 1. Start, end and pad ids are the text tokenizer's (`data/text_tokenizer.py`:
    BPE's SOT/EOT, or CLIPS's WordPiece BOS=1/EOS=2), and so is the vocabulary.
    CLIPS's released sketch feeds the queries alone; then nothing tells query q which tokens
    came before it, the causal mask among queries would carry no information and decoding could
    not be autoregressive. With the shifted target added (as CoCa's decoder embeds its text) the
    decoder is a real autoregressive model and greedy decoding feeds back its own tokens.
Mask (`cross_causal_mask`, CLIPS's `build_cross_causal_mask`): the prefix attends only to the
prefix, the queries to the whole prefix and causally to each other. Then ln_final and a
projection to the text vocabulary (`model.text.vocab_size`); the loss is the cross-entropy on
the full caption ignoring padding (`losses.caption_loss`).

Size: CLIPS ships no decoder size. The defaults are OpenCLIP CoCa ViT-B's multimodal text
decoder (`coca_ViT-B-32.json`: width 512, 12 layers, 8 heads, MLP ratio 4), CoCa's own recipe
for a decoder beside a B-sized pair of towers and the one CLIPS's code (a modified OpenCLIP)
inherits its `MultimodalCfg` from (8 heads, head width 64); for ViT-L/14 CoCa uses width 768 and
12 heads (`coca_ViT-L-14.json`). Here the decoder is a stack of self-attention blocks over the
joint sequence (prefix-LM, as CLIPS), not CoCa's cross-attention, so the same depth holds about
as many weights. Blocks, sharding (logical axes, parameter kinds) and rematerialisation are the
towers' (`layers.Transformer`).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.models import layers


def cross_causal_mask(prefix_len: int, num_queries: int) -> jax.Array:
    """bool (S, S), S = prefix_len + num_queries; [i, j] = row i may attend to column j."""
    s = prefix_len + num_queries
    row, col = jnp.arange(s)[:, None], jnp.arange(s)[None, :]
    to_prefix = col < prefix_len  # everyone sees the prefix
    among_queries = (row >= prefix_len) & (col <= row)  # queries: causal among themselves
    return to_prefix | among_queries


class Captioner(nnx.Module):
    def __init__(self, cfg, *, image_width: int, text_width: int, vocab_size: int, eps, act,
                 dtype, remat, rngs: nnx.Rngs, attention="xla"):
        width = cfg.width
        self.image_proj = layers.normal_param(rngs, (image_width, width), ("embed", None),
                                              image_width**-0.5, kind="weight")
        self.text_proj = layers.normal_param(rngs, (text_width, width), ("embed", None),
                                             text_width**-0.5, kind="weight")
        self.query_tokens = layers.normal_param(rngs, (cfg.num_queries, width), (None, "embed"),
                                                0.02, kind="embedding")
        self.token_embedding = layers.normal_param(rngs, (vocab_size, width), ("vocab", "embed"),
                                                   0.02, kind="weight")
        self.transformer = layers.Transformer(width, cfg.depth, cfg.heads, cfg.mlp_ratio, eps=eps,
                                              act=act, dtype=dtype, remat=remat, rngs=rngs,
                                              attention=attention)
        self.ln_final = layers.LayerNorm(width, eps)
        self.head = layers.normal_param(rngs, (width, vocab_size), ("embed", "vocab"),
                                        width**-0.5, kind="weight")
        self.num_queries = cfg.num_queries
        self.dtype = dtype

    def prefix(self, image_tokens, text_tokens):
        """Tower output tokens -> the decoder's prefix, (B, P, width)."""
        w = lambda p: layers.read(p, self.dtype)
        x = jnp.concatenate([image_tokens.astype(self.dtype) @ w(self.image_proj),
                             text_tokens.astype(self.dtype) @ w(self.text_proj)], axis=1)
        return sharding.constrain(x, ("batch", "seq", "embed"))

    def logits_from_prefix(self, prefix, inputs):
        """prefix (B, P, width), inputs (B, num_queries) int32 (start + the caption so far) ->
        float32 logits (B, num_queries, vocab): row q predicts token q + 1."""
        w = lambda p: layers.read(p, self.dtype)
        queries = w(self.query_tokens) + jnp.take(w(self.token_embedding), inputs, axis=0)
        x = jnp.concatenate([prefix, queries.astype(self.dtype)], axis=1)
        x = sharding.constrain(x, ("batch", "seq", "embed"))
        p = prefix.shape[1]
        x = self.transformer(x, causal=False, mask=cross_causal_mask(p, self.num_queries))
        x = self.ln_final(x[:, p:])
        return sharding.constrain((x @ w(self.head)).astype(jnp.float32),
                                  ("batch", "seq", "vocab"))

    def __call__(self, image_tokens, text_tokens, inputs):
        return self.logits_from_prefix(self.prefix(image_tokens, text_tokens), inputs)

    def greedy(self, image_tokens, text_tokens, start_id: int, end_id: int, pad_id: int = 0):
        """The most likely caption, token by token: int32 (B, num_queries), the tokens after
        `start_id` (`end_id` included) then `pad_id`. Each step reruns the decoder on the prefix
        and the tokens so far (no key/value cache: the decoder is small and decoding is for
        inspection)."""
        prefix = self.prefix(image_tokens, text_tokens)
        b, q = prefix.shape[0], self.num_queries
        inputs = jnp.full((b, q), pad_id, jnp.int32).at[:, 0].set(start_id)

        def step(t, carry):
            inputs, out, done = carry
            logits = jax.lax.dynamic_index_in_dim(self.logits_from_prefix(prefix, inputs), t,
                                                  axis=1, keepdims=False)
            token = jnp.where(done, pad_id, jnp.argmax(logits, -1).astype(jnp.int32))
            out = out.at[:, t].set(token)
            # the last query's token is an output only: there is no query after it to feed
            inputs = jnp.where(t + 1 < q, inputs.at[:, jnp.minimum(t + 1, q - 1)].set(token),
                               inputs)
            return inputs, out, done | (token == end_id)

        out = jnp.full((b, q), pad_id, jnp.int32)
        _, out, _ = jax.lax.fori_loop(0, q, step, (inputs, out, jnp.zeros((b,), bool)))
        return out


def caption_inputs_and_labels(caption):
    """Target rows (B, num_queries + 1): start, caption, end, padding -> (inputs, labels)."""
    return caption[:, :-1], caption[:, 1:]

