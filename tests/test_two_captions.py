"""CLIPS's two caption roles: records with a web caption, the pipeline's three texts, the
two-caption contrastive loss (vs NumPy on 1 and 8 devices), the caption cross-entropy, and the
config rules of the CLIPS keys."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from synthclip_jax.data import pipeline
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.tfrecord import encode_example
from synthclip_jax.data.tokenizer import get_tokenizer, tokenize
from synthclip_jax.losses import (BATCH_AXES, LOSS_NAMES, ContrastiveOutputs, caption_loss,
                                  make_two_caption_loss)
from tests.test_losses import _features, _mesh, reference
from tests.test_pipeline import data_config, jpeg
from tests.test_config_check import refusal

LONG = ("a large red circle at the top left of the picture on a grey background, drawn with "
        "a thin dark outline and a soft shadow below it")


@pytest.mark.parametrize("shape", [(1, 1, 1), (8, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_two_caption_loss_matches_numpy(name, shape):
    img, web = _features(seed=1)
    _, partial = _features(seed=2)
    scale, bias = np.log(10.0), -3.0
    mesh = _mesh(shape)
    loss_fn = make_two_caption_loss(name, mesh)

    def f(i, w, p, s):
        return loss_fn(ContrastiveOutputs(i, w, s, jnp.float32(bias)), p)

    place = lambda x: jax.device_put(jnp.asarray(x, jnp.float32),
                                     NamedSharding(mesh, P(BATCH_AXES, None)))
    args = (place(img), place(web), place(partial), jnp.float32(scale))
    loss, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(*args)
    f64 = lambda x: np.float64(np.float32(x))
    ref_web = reference(name, f64(img), f64(web), float(np.float32(scale)), bias)
    ref_partial = reference(name, f64(img), f64(partial), float(np.float32(scale)), bias)
    close = lambda got, want: np.testing.assert_allclose(np.float64(got), want, rtol=1e-5,
                                                         atol=1e-6)
    close(loss, 0.5 * (ref_web[0] + ref_partial[0]))
    close(grads[0], 0.5 * (ref_web[1] + ref_partial[1]))  # the image is in both terms
    close(grads[1], 0.5 * ref_web[2])
    close(grads[2], 0.5 * ref_partial[2])
    close(grads[3], 0.5 * (ref_web[3] + ref_partial[3]))


def test_caption_loss_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11))
    labels = rng.integers(1, 11, size=(3, 5))
    labels[0, 3:] = 0
    labels[2, 1:] = 0
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    want = nll[labels != 0].mean()
    got = caption_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def write_roles(folder):
    """8 records; even ones carry a web caption, odd ones only their long caption."""
    with ShardWriter(str(folder / shard_name("roles", 0, 1))) as w:
        for i in range(8):
            w.write(encode_example(image=jpeg((i * 30, 80, 128)), captions=[f"{LONG} {i}"],
                                   key=str(i), web_caption=f"a red circle {i}" if i % 2 == 0
                                   else ""))
    return str(folder / "*.tfrecord")


def test_pipeline_yields_web_partial_and_full_caption(tmp_path):
    config = data_config(write_roles(tmp_path), text_reduction="block", partial_caption_tokens=5)
    config.model.text.context_length = 16
    config.loss.two_captions = True
    config.model.captioner.update(enabled=True, num_queries=40)
    batch = next(pipeline.make_grain_source(config, 0, 1))
    assert set(batch) == {"image", "text", "web_text", "caption"}
    sot, eot = tokenize([""], 2)[0]
    ids = {int(i): get_tokenizer().encode(f"{LONG} {i}") for i in range(8)}
    for text, web, full in zip(batch["text"], batch["web_text"], batch["caption"]):
        assert full.shape == (41,)
        key = next(k for k, v in ids.items() if np.array_equal(full, tokenize(
            [f"{LONG} {k}"], 41)[0]))
        want_web = f"a red circle {key}" if key % 2 == 0 else f"{LONG} {key}"
        np.testing.assert_array_equal(web, tokenize([want_web], 16)[0])
        # partial: SOT, a block of exactly K=5 of the caption's tokens, EOT, padding to 16
        assert text[0] == sot and text[6] == eot and not text[7:].any()
        block = list(text[1:6])
        caption = ids[key]
        assert any(caption[s:s + 5] == block for s in range(len(caption) - 4))


def test_plain_run_yields_only_image_and_text(tmp_path):
    batch = next(pipeline.make_grain_source(data_config(write_roles(tmp_path)), 0, 1))
    assert set(batch) == {"image", "text"}
    assert batch["text"].shape == (8, 16)


RULES = {  # key the error must name: {key: bad value}
    "data.partial_caption_tokens": {"data.partial_caption_tokens": 15},  # context 16 - 2 = 14
    "loss.two_captions": {"loss.two_captions": True, "data.source": "shapes"},
    "model.captioner.enabled": {"model.captioner.enabled": True, "data.source": "shapes"},
    "train.grad_accum_steps": {"loss.two_captions": True, "train.grad_accum_steps": 2},
    "loss.caption_weight": {"loss.caption_weight": -1.0},
    "model.captioner.width": {"model.captioner.enabled": True, "model.captioner.heads": 7},
    "model.text.vocab_size": {"model.captioner.enabled": True, "model.text.vocab_size": 64},
    "model.captioner.num_queries": {"model.captioner.enabled": True,
                                    "model.captioner.num_queries": 0},
}


@pytest.mark.parametrize("key", sorted(RULES))
def test_clips_rules_name_the_key(key):
    assert refusal(RULES[key]).key == key
