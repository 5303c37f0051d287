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
                   ring, so only one b x b logits block exists at a time; the
                   rematerialised loop body keeps backward at O(b*b) logits too
                   (the per-step text chunks, B*E in total, are still saved).

Mesh axes outside `batch_axes` (e.g. 'tensor') just replicate the computation.
Every loss returns the same float32 scalar on all devices, whatever the input dtype.
"""
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from synthclip_jax.sharding import BATCH_AXES

LOSS_NAMES = ('softmax', 'sigmoid', 'sigmoid_ring')


def _local_labels(local_b, batch_axes):
    # axis_index over a tuple of axes is the row-major linear index, the same
    # order all_gather(tiled=True) concatenates the shards in.
    return jax.lax.axis_index(batch_axes) * local_b + jnp.arange(local_b)


def _softmax_local(img, txt, logit_scale, *, batch_axes, global_b):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    scale = jnp.exp(logit_scale.astype(jnp.float32))
    all_img = jax.lax.all_gather(img, batch_axes, tiled=True)
    all_txt = jax.lax.all_gather(txt, batch_axes, tiled=True)
    labels = _local_labels(img.shape[0], batch_axes)

    def ce_sum(logits):
        logz = jax.nn.logsumexp(logits, axis=1)
        pos = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        return jnp.sum(logz - pos)

    # Row i of L.T is text i against all images, so the text->image CE over
    # local text rows covers exactly this device's columns of L.
    local = ce_sum(scale * img @ all_txt.T) + ce_sum(scale * txt @ all_img.T)
    return jax.lax.psum(local, batch_axes) / (2 * global_b)


def _sigmoid_block(img, txt, scale, bias, positive_diag):
    logits = scale * img @ txt.T + bias
    n = logits.shape[0]
    z = jnp.where(jnp.eye(n, dtype=bool) & positive_diag, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(z * logits))


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


def _sigmoid_ring_local(img, txt, logit_scale, logit_bias, *, batch_axes,
                        global_b, n):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    scale = jnp.exp(logit_scale.astype(jnp.float32))
    bias = logit_bias.astype(jnp.float32)
    perm = [(i, (i + 1) % n) for i in range(n)]

    # Remat so the backward pass recomputes each b x b block from the saved
    # text chunk instead of keeping all n blocks alive.
    @jax.checkpoint
    def body(k, carry):
        chunk, acc = carry
        # Only step 0 sees this device's own texts, i.e. the positive pairs.
        acc = acc + _sigmoid_block(img, chunk, scale, bias, k == 0)
        return jax.lax.ppermute(chunk, batch_axes, perm), acc

    # The accumulator starts replicated but becomes device-dependent in the loop;
    # fori_loop needs carry types (including varying-ness) to match.
    acc0 = jax.lax.pcast(jnp.zeros((), jnp.float32), batch_axes, to='varying')
    # n-1 hops, then the last chunk outside the loop: no wasted final ppermute.
    chunk, acc = jax.lax.fori_loop(0, n - 1, body, (txt, acc0))
    acc = acc + _sigmoid_block(img, chunk, scale, bias, n == 1)
    return jax.lax.psum(acc, batch_axes) / global_b


def make_contrastive_loss(name: str, mesh: jax.sharding.Mesh,
                          batch_axes=BATCH_AXES):
    """Returns loss_fn(image_features, text_features, logit_scale, logit_bias) -> scalar float32.

    Features are (global_batch, embed), row i of each a positive pair, sharded
    (or shardable) as P(batch_axes, None). `logit_scale` is the log of the
    temperature scale; `logit_bias` is ignored by 'softmax'.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f'unknown contrastive loss {name!r}; expected one of {LOSS_NAMES}')
    batch_axes = tuple(batch_axes)
    n = math.prod(mesh.shape[a] for a in batch_axes)
    feat_spec = P(batch_axes, None)

    def loss_fn(image_features, text_features, logit_scale, logit_bias):
        global_b = image_features.shape[0]
        if text_features.shape[0] != global_b:
            raise ValueError(f'image batch {global_b} != text batch {text_features.shape[0]}')
        if global_b % n:
            raise ValueError(f'global batch {global_b} is not divisible by the {n} devices '
                             f'along batch axes {batch_axes} of mesh {dict(mesh.shape)}')
        logit_scale = jnp.asarray(logit_scale)
        logit_bias = jnp.asarray(logit_bias)
        if name == 'softmax':
            f = jax.shard_map(
                lambda i, t, s: _softmax_local(i, t, s, batch_axes=batch_axes, global_b=global_b),
                mesh=mesh, in_specs=(feat_spec, feat_spec, P()), out_specs=P())
            return f(image_features, text_features, logit_scale)
        local = _sigmoid_local if name == 'sigmoid' else _sigmoid_ring_local
        kwargs = dict(batch_axes=batch_axes, global_b=global_b)
        if name == 'sigmoid_ring':
            kwargs['n'] = n
        f = jax.shard_map(lambda i, t, s, b: local(i, t, s, b, **kwargs),
                          mesh=mesh, in_specs=(feat_spec, feat_spec, P(), P()), out_specs=P())
        return f(image_features, text_features, logit_scale, logit_bias)

    return loss_fn
