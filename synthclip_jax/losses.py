"""Contrastive losses over a batch sharded along the mesh's batch axes.

All three run inside `jax.shard_map` over `batch_axes` (default ('data', 'fsdp')).
With B the global batch, b = B / n the per-device batch (n = devices along the
batch axes) and E the embedding size, per device:

* ``softmax``      symmetric InfoNCE (CLIP). Each device all-gathers both
                   modalities and builds its b x B image->text and text->image
                   logit rows: O(B*E + b*B) memory.
* ``sigmoid``      SigLIP, all-gather form: local images vs all texts,
                   O(B*E + b*B).
* ``sigmoid_ring`` SigLIP, chunked form: text chunks travel around a ppermute
                   ring, so only one b x b logits block exists at a time. Its
                   custom VJP runs the ring again in the backward pass, with each
                   chunk's gradient travelling beside it back to its owner, so
                   only the local features are saved: O(b*E + b*b) per device.

Mesh axes outside `batch_axes` (e.g. 'tensor') just replicate the computation.
Every loss returns the same float32 scalar on all devices, whatever the input dtype.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from synthclip_jax.config.choices import LOSS_NAMES
from synthclip_jax.sharding import BATCH_AXES



class ContrastiveOutputs(NamedTuple):
    """What a two-tower model gives a contrastive loss (a pytree, so it is also the shape of the
    loss's gradient). Row i of `image` and `text` is a positive pair."""
    image: jax.Array  # (B, E) features
    text: jax.Array  # (B, E) features
    logit_scale: jax.Array  # () log of the temperature scale
    logit_bias: jax.Array  # () 0 where the model has none; ignored by 'softmax'


def _local_labels(local_b, batch_axes):
    # axis_index over a tuple of axes is the row-major linear index, the same
    # order all_gather(tiled=True) concatenates the shards in.
    return jax.lax.axis_index(batch_axes) * local_b + jnp.arange(local_b)


def _softmax_local(img, txt, logit_scale, logit_bias=None, weights=None, *, batch_axes,
                   global_b, label_smoothing=0.0):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    scale = jnp.exp(logit_scale.astype(jnp.float32))
    # simple-clip adds its learnable bias under softmax too: a constant shift of every logit,
    # so it changes neither the loss nor any gradient (its own is zero).
    bias = 0.0 if logit_bias is None else logit_bias.astype(jnp.float32)
    all_img = jax.lax.all_gather(img, batch_axes, tiled=True)
    all_txt = jax.lax.all_gather(txt, batch_axes, tiled=True)
    labels = _local_labels(img.shape[0], batch_axes)
    if weights is None:
        local_w = all_w = None
    else:
        local_w = weights.astype(jnp.float32)
        all_w = jax.lax.all_gather(local_w, batch_axes, tiled=True)

    def ce_sum(logits):
        # SimCLIP's torch cross_entropy(weight=w, label_smoothing=a) with labels arange(B):
        # row i costs (1 - a) w_i CE(i, i) + a / B sum_c w_c CE(i, c).
        logz = jax.nn.logsumexp(logits, axis=1)
        pos = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        own = logz - pos
        if local_w is not None:
            own = own * local_w
        if not label_smoothing:
            return jnp.sum(own)
        ce = logz[:, None] - logits
        spread = jnp.sum(ce if all_w is None else ce * all_w[None, :], axis=1) / global_b
        return jnp.sum((1 - label_smoothing) * own + label_smoothing * spread)

    # Row i of L.T is text i against all images, so the text->image CE over
    # local text rows covers exactly this device's columns of L.
    local = ce_sum(scale * img @ all_txt.T + bias) + ce_sum(scale * txt @ all_img.T + bias)
    # torch's weighted mean divides by the sum of the targets' weights
    total = global_b if local_w is None else jax.lax.psum(jnp.sum(local_w), batch_axes)
    return jax.lax.psum(local, batch_axes) / (2 * total)


def _sigmoid_local(img, txt, logit_scale, logit_bias, *, batch_axes, global_b):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    scale = jnp.exp(logit_scale.astype(jnp.float32))
    bias = logit_bias.astype(jnp.float32)
    all_txt = jax.lax.all_gather(txt, batch_axes, tiled=True)
    logits = scale * img @ all_txt.T + bias
    labels = _local_labels(img.shape[0], batch_axes)
    z = jnp.where(labels[:, None] == jnp.arange(global_b)[None, :], 1.0, -1.0)
    local = -jnp.sum(jax.nn.log_sigmoid(z * logits))
    return jax.lax.psum(local, batch_axes) / global_b


def _ring_perm(n):
    return [(i, (i + 1) % n) for i in range(n)]


def _ring_block(img, chunk, scale, bias, positive_diag):
    """One b x b block: (loss, d loss / d logits)."""
    logits = scale * img @ chunk.T + bias
    n = logits.shape[0]
    z = jnp.where(jnp.eye(n, dtype=bool) & positive_diag, 1.0, -1.0)
    loss = -jnp.sum(jax.nn.log_sigmoid(z * logits))
    return loss, -z * jax.nn.sigmoid(-z * logits)


def _varying_zeros(shape, batch_axes):
    return jax.lax.pcast(jnp.zeros(shape, jnp.float32), batch_axes, to='varying')


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_sum(img, txt, scale, bias, batch_axes, n):
    """This device's images against every device's texts, summed; all inputs varying f32.

    At hop k a device holds the chunk of device (i - k) mod n; only hop 0 (its own texts)
    has the positive pairs on the diagonal.
    """
    def body(k, carry):
        chunk, acc = carry
        acc = acc + _ring_block(img, chunk, scale, bias, k == 0)[0]
        return jax.lax.ppermute(chunk, batch_axes, _ring_perm(n)), acc

    # n-1 hops, then the last chunk outside the loop: no wasted final ppermute.
    chunk, acc = jax.lax.fori_loop(0, n - 1, body, (txt, _varying_zeros((), batch_axes)))
    return acc + _ring_block(img, chunk, scale, bias, n == 1)[0]


def _ring_sum_fwd(img, txt, scale, bias, batch_axes, n):
    return _ring_sum(img, txt, scale, bias, batch_axes, n), (img, txt, scale, bias)


def _ring_sum_bwd(batch_axes, n, saved, g):
    img, txt, scale, bias = saved
    perm = _ring_perm(n)

    # Sums of d loss / d logits terms; the scalar factors (g, scale) are applied once at the
    # end, since scaling a b x b block per matmul would materialise a copy of it each time.
    # Only one b x b block is live: d scale = sum(dlogits * (img @ chunk.T)) summed over
    # chunks equals sum(img * sum(dlogits @ chunk)), which needs no logits kept.
    def block_grads(chunk, carry, positive_diag):
        dchunk, dimg, dbias = carry
        dlogits = _ring_block(img, chunk, scale, bias, positive_diag)[1]
        return dchunk + dlogits.T @ img, dimg + dlogits @ chunk, dbias + jnp.sum(dlogits)

    def body(k, carry):
        chunk, grads = carry
        # The chunk's gradient travels with it, accumulating every device's share.
        dchunk, *rest = block_grads(chunk, grads, k == 0)
        return (jax.lax.ppermute(chunk, batch_axes, perm),
                (jax.lax.ppermute(dchunk, batch_axes, perm), *rest))

    zeros = (_varying_zeros(txt.shape, batch_axes), _varying_zeros(img.shape, batch_axes),
             _varying_zeros((), batch_axes))
    chunk, grads = jax.lax.fori_loop(0, n - 1, body, (txt, zeros))
    dchunk, dimg, dbias = block_grads(chunk, grads, n == 1)
    # After n-1 hops device i holds device (i+1)'s chunk: one more hop takes its gradient home.
    dtxt = jax.lax.ppermute(dchunk, batch_axes, perm)
    return g * scale * dimg, g * scale * dtxt, g * jnp.sum(dimg * img), g * dbias


_ring_sum.defvjp(_ring_sum_fwd, _ring_sum_bwd)


def _sigmoid_ring_local(img, txt, logit_scale, logit_bias, *, batch_axes,
                        global_b, n):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    # Made varying here so the custom VJP's scalar cotangents are per device; the pcast's
    # transpose then sums them over the ring.
    scale = jax.lax.pcast(jnp.exp(logit_scale.astype(jnp.float32)), batch_axes, to='varying')
    bias = jax.lax.pcast(logit_bias.astype(jnp.float32), batch_axes, to='varying')
    acc = _ring_sum(img, txt, scale, bias, batch_axes, n)
    return jax.lax.psum(acc, batch_axes) / global_b


def make_contrastive_loss(name: str, mesh: jax.sharding.Mesh,
                          batch_axes=BATCH_AXES, *, label_smoothing: float = 0.0,
                          softmax_bias: bool = False):
    """Returns loss_fn(outputs: ContrastiveOutputs, weights=None) -> scalar float32.

    Features are (global_batch, embed), sharded (or shardable) as P(batch_axes, None).
    'softmax' only (SimCLIP's loss options): `weights` (global_batch,) per-sample weights and
    `label_smoothing` as torch's cross_entropy(weight=, label_smoothing=); `softmax_bias` adds
    the model's logit bias to the logits (simple-clip; no effect on loss or gradients).
    """
    if name not in LOSS_NAMES:
        raise ValueError(f'unknown contrastive loss {name!r}; expected one of {LOSS_NAMES}')
    batch_axes = tuple(batch_axes)
    n = math.prod(mesh.shape[a] for a in batch_axes)
    feat_spec = P(batch_axes, None)

    if name != 'softmax' and (label_smoothing or softmax_bias):
        raise ValueError(f'label smoothing and the softmax bias are options of the softmax loss, '
                         f'not {name!r}')

    def loss_fn(outputs: ContrastiveOutputs, weights=None):
        if weights is not None and name != 'softmax':
            raise ValueError(f'per-sample weights are an option of the softmax loss, not {name!r}')
        image_features, text_features, logit_scale, logit_bias = outputs
        global_b = image_features.shape[0]
        if text_features.shape[0] != global_b:
            raise ValueError(f'image batch {global_b} != text batch {text_features.shape[0]}')
        if global_b % n:
            raise ValueError(f'global batch {global_b} is not divisible by the {n} devices '
                             f'along batch axes {batch_axes} of mesh {dict(mesh.shape)}')
        logit_scale = jnp.asarray(logit_scale)
        logit_bias = jnp.asarray(logit_bias)
        if name == 'softmax':
            bias = logit_bias if softmax_bias else None
            w_spec = P() if weights is None else P(batch_axes)
            f = jax.shard_map(
                lambda i, t, s, b, w: _softmax_local(
                    i, t, s, b, w, batch_axes=batch_axes, global_b=global_b,
                    label_smoothing=label_smoothing),
                mesh=mesh, in_specs=(feat_spec, feat_spec, P(), P(), w_spec), out_specs=P())
            return f(image_features, text_features, logit_scale, bias, weights)
        local = _sigmoid_local if name == 'sigmoid' else _sigmoid_ring_local
        kwargs = dict(batch_axes=batch_axes, global_b=global_b)
        if name == 'sigmoid_ring':
            kwargs['n'] = n
        f = jax.shard_map(lambda i, t, s, b: local(i, t, s, b, **kwargs),
                          mesh=mesh, in_specs=(feat_spec, feat_spec, P(), P()), out_specs=P())
        return f(image_features, text_features, logit_scale, logit_bias)

    return loss_fn


def make_two_caption_loss(name: str, mesh: jax.sharding.Mesh, batch_axes=BATCH_AXES):
    """CLIPS's contrastive loss: each image against two captions of itself, each role its own
    batch of negatives (as CLIPS's two ClipLoss calls), averaged:
    0.5 * (L(img, web) + L(img, partial synthetic)), with L the loss `name` on any mesh.

    Returns loss_fn(web: ContrastiveOutputs, partial_text: (B, E) features) -> scalar."""
    loss_fn = make_contrastive_loss(name, mesh, batch_axes)

    def two_caption_loss(web: ContrastiveOutputs, partial_text):
        return 0.5 * (loss_fn(web) + loss_fn(web._replace(text=partial_text)))

    return two_caption_loss


def caption_loss(logits, labels, pad_id: int = 0):
    """Mean next-token cross-entropy over the non-padding labels of the whole (global) batch,
    in float32: logits (B, T, V), labels (B, T) int (CLIPS: CrossEntropy(ignore_index=pad))."""
    mask = (labels != pad_id).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)
