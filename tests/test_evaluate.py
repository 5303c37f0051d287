"""Zero-shot and retrieval evaluation against direct computations."""
import io
import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from synthclip_jax import sharding
from synthclip_jax.data import shapes
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.tfrecord import encode_example
from synthclip_jax.data.tokenizer import tokenize
from synthclip_jax.evaluate import retrieval, zeroshot
from synthclip_jax.evaluate.encode import Encoder
from synthclip_jax.evaluate.latest import evaluate_latest
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train import loop
from tests.test_train_parallel import tiny_train_config


def brute_force_recalls(sim, caption_image, k):
    n_img, n_cap = sim.shape
    i2t = t2i = 0
    for i in range(n_img):
        top = sorted(range(n_cap), key=lambda j: -sim[i, j])[:k]
        i2t += any(caption_image[j] == i for j in top)
    for j in range(n_cap):
        top = sorted(range(n_img), key=lambda i: -sim[i, j])[:k]
        t2i += caption_image[j] in top
    return i2t / n_img, t2i / n_cap


def test_recalls_match_brute_force_with_several_captions_per_image():
    rng = np.random.default_rng(0)
    caption_image = np.repeat(np.arange(12), rng.integers(1, 4, 12))
    sim = rng.normal(size=(12, len(caption_image)))
    sim[caption_image[:5], np.arange(5)] += 3  # some easy hits
    got = retrieval.recalls(sim, caption_image)
    for k in retrieval.KS:
        i2t, t2i = brute_force_recalls(sim, caption_image, k)
        assert got[f"retrieval/i2t_R@{k}"] == pytest.approx(i2t)
        assert got[f"retrieval/t2i_R@{k}"] == pytest.approx(t2i)


def test_topk_accuracy():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 0])
    assert zeroshot.topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert zeroshot.topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert zeroshot.topk_accuracy(logits, labels, 5) == 1.0


def test_sharded_encoder_with_padding_equals_direct_forward():
    config = tiny_train_config("softmax", (8, 1, 1))
    model = build_model(config, 0)
    graphdef, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model))
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    encoder = Encoder(graphdef, mesh, batch_size=8)
    images = np.random.default_rng(0).normal(size=(13, 16, 16, 3)).astype(np.float32)
    tokens = tokenize([f"caption {i}" for i in range(13)], 12) % 50  # tiny vocab
    np.testing.assert_allclose(encoder.images(params, images), model.encode_image(images),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoder.texts(params, tokens), model.encode_text(tokens),
                               rtol=1e-5, atol=1e-6)


def write_eval_sets(folder, n=24):
    """A zero-shot folder (classes = colours) and retrieval shards of captioned shapes."""
    source = shapes.ShapesSource(seed=5, global_batch=1, image_size=32, context_length=16,
                                    vocab_size=49408, mean=(0, 0, 0), std=(1, 1, 1))
    with ShardWriter(str(folder / shard_name("retrieval", 0, 1))) as writer:
        for i in range(n):
            rng = np.random.default_rng(i)
            color = list(shapes.COLORS)[i % 3]
            image = shapes.render("large", color, "square", "center", (128, 128, 128), 32, rng)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "PNG")
            (folder / "zs" / color).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / "zs" / color / f"{i}.png")
            _, caption = source.example(i)
            # Unique captions: no exact ties, so R@1 does not depend on tie-breaking.
            writer.write(encode_example(image=buf.getvalue(), key=str(i),
                                        captions=[f"{caption} number {i}", f"{color} {i}"]))
    return str(folder / "zs"), str(folder / "*.tfrecord")


def test_zeroshot_equals_direct_numpy_computation(tmp_path):
    zs_root, _ = write_eval_sets(tmp_path)
    config = tiny_train_config("softmax", (2, 2, 2))
    config.model.text.update(vocab_size=49408, context_length=16)
    config.data.image_size = 32
    model = build_model(config, 3)
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    encoder = Encoder(nnx.graphdef(model), mesh, batch_size=16)
    params = nnx.to_pure_dict(nnx.state(model))
    data = zeroshot.ZeroShotSet(zs_root, 32, config.data.mean, config.data.std)
    assert data.classnames == sorted(list(shapes.COLORS)[:3]) and len(data.labels) == 24
    got = zeroshot.evaluate(encoder, params, data, "simple", 16)
    # Direct: one template, so the classifier is that prompt's normalised embedding.
    weights = np.asarray(model.encode_text(tokenize([f"a photo of a {c}." for c in
                                                      data.classnames], 16)))
    pred = np.argmax(np.asarray(model.encode_image(data.images)) @ weights.T, axis=1)
    assert got["zeroshot/top1"] == pytest.approx(np.mean(pred == data.labels))
    assert got["zeroshot/top5"] == 1.0 and got["zeroshot/chance_top1"] == pytest.approx(1 / 3)


def training_with_eval_config(tmp_path, mesh, total_steps, eval_every):
    """A tiny run with the OpenCLIP tokenizer's vocabulary, evaluating on write_eval_sets."""
    zs_root, pattern = write_eval_sets(tmp_path)
    config = tiny_train_config("softmax", mesh)
    config.model.text.update(vocab_size=49408, context_length=16)
    config.data.image_size = 32
    config.total_steps, config.checkpoint.every_steps = total_steps, 0
    config.eval.update(every_steps=eval_every, zeroshot=zs_root, retrieval=pattern,
                       templates="simple")
    return config


@pytest.mark.slow
def test_training_evaluates_on_schedule_and_eval_mode(tmp_path):
    config = training_with_eval_config(tmp_path, (2, 2, 2), total_steps=4, eval_every=2)
    workdir = tmp_path / "run"
    loop.train(config, workdir, devices=jax.devices())
    rows = [json.loads(x) for x in (workdir / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("zeroshot/top1", "zeroshot/top5", "retrieval/i2t_R@1", "retrieval/i2t_R@5",
                "retrieval/t2i_R@1", "retrieval/t2i_R@5"):
        assert 0.0 <= rows[-1][key] <= 1.0
    again = evaluate_latest(config, workdir, devices=jax.devices())
    rows = [json.loads(x) for x in (workdir / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]  # re-evaluating step 4 replaces its line
    assert again["zeroshot/top1"] == pytest.approx(rows[-1]["zeroshot/top1"])


def test_eval_mode_without_checkpoint_or_sets_fails_clearly(tmp_path):
    config = tiny_train_config()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate_latest(config, tmp_path, devices=jax.devices()[:1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        zeroshot.ZeroShotSet(tmp_path / "empty", 16, (0, 0, 0), (1, 1, 1))
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(FileNotFoundError, match="no images in class folders"):
        zeroshot.ZeroShotSet(tmp_path / "empty", 16, (0, 0, 0), (1, 1, 1))
