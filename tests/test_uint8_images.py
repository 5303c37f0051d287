"""Images cross to the device as uint8 and are normalised there: the train step and the
evaluation Encoder give what the float path (normalised on the host, NumPy) gives."""
import jax
import numpy as np
import pytest

from synthclip_jax import sharding
from synthclip_jax.data.pipeline import make_grain_source
from synthclip_jax.data.shapes_demo import write_shards
from synthclip_jax.evaluate.encode import Encoder
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_train_parallel import tiny_train_config

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def host_normalized(pixels):
    return ((pixels.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
            ).astype(np.float32)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    config = tiny_train_config()
    config.model.text.update(vocab_size=49408, context_length=12)
    config.data.update(source="tfrecord", num_workers=0, mean=MEAN, std=STD,
                       train=write_shards(folder, "shapes", 0, 32, 2, seed=0, image_size=24))
    batch = next(make_grain_source(config, 0, 1))
    assert batch["image"].dtype == np.uint8  # what leaves the host
    return config, batch


@pytest.mark.slow
def test_train_step_normalizes_on_device(batch):
    config, pixels = batch
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_train_setup(config, mesh)
    step = make_train_step(config, setup, mesh)
    results = []
    for images in (pixels["image"], host_normalized(pixels["image"])):
        b = sharding.global_batch({"image": images, "text": pixels["text"]}, mesh)
        state, metrics = step(setup.init(), b)
        results.append((float(metrics["loss"]), jax.device_get(state["params"])))
    (loss_u8, params_u8), (loss_f32, params_f32) = results
    assert loss_u8 == pytest.approx(loss_f32, rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 params_u8, params_f32)


def test_encoder_normalizes_on_device(batch):
    config, pixels = batch
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_train_setup(config, mesh)
    params = setup.init()["params"]
    encoder = Encoder(setup.graphdef, mesh, 8, mean=MEAN, std=STD)
    got = encoder.images(params, pixels["image"])
    want = encoder.images(params, host_normalized(pixels["image"]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mean and std"):
        Encoder(setup.graphdef, mesh, 8).images(params, pixels["image"])
