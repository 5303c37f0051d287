"""Locked towers (train/lock.py): locked parameters bitwise unchanged after training, no
optimizer moments for them (the bytes saved counted), the trainable rows of stacked blocks
trained, on an 8-device FSDP + tensor mesh; a locked ResNet's BatchNorm statistics frozen."""
import jax
import numpy as np
import pytest

from synthclip_jax import sharding
from synthclip_jax.config.check import validate
from synthclip_jax.config.error import ConfigError
from synthclip_jax.data.source import make_train_source
from synthclip_jax.train.state import count_params, make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_train_parallel import tiny_train_config


def run(config, devices, steps=2):
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    state, train_step = setup.init(), make_train_step(config, setup, mesh)
    before = jax.device_get(state["params"])
    data = make_train_source(config)
    for _ in range(steps):
        state, metrics = train_step(state, sharding.global_batch(next(data), mesh))
    assert np.isfinite(float(metrics["loss"]))
    return before, jax.device_get(state["params"]), state, setup


def changed(a, b) -> bool:
    return not np.array_equal(a, b)


def test_locked_vit_and_text_towers_on_fsdp_tensor_mesh():
    config = tiny_train_config("softmax", (2, 2, 2))  # towers of depth 2
    config.train.update(lock_image=True, lock_image_unlocked_layers=1, lock_text=True)
    before, after, state, setup = run(config, jax.devices())
    v0, v1, t0, t1 = before["visual"], after["visual"], before["text"], after["text"]
    # image: last block (row 1), ln_post and proj train; the rest stays bit for bit
    for name in ("conv1_kernel", "class_embedding", "positional_embedding"):
        np.testing.assert_array_equal(v1[name], v0[name])
    jax.tree.map(np.testing.assert_array_equal, v1["ln_pre"], v0["ln_pre"])
    for name, rows in v1["transformer"]["resblocks"].items():
        if isinstance(rows, dict):
            continue
        np.testing.assert_array_equal(rows[0], v0["transformer"]["resblocks"][name][0])
    assert changed(v1["transformer"]["resblocks"]["c_fc_kernel"][1],
                   v0["transformer"]["resblocks"]["c_fc_kernel"][1])
    assert changed(v1["proj"], v0["proj"]) and changed(v1["ln_post"]["scale"],
                                                       v0["ln_post"]["scale"])
    # text, 0 unlocked layers: only the projection trains
    text_locked = {k: v for k, v in t1.items() if k != "text_projection"}
    jax.tree.map(np.testing.assert_array_equal, text_locked,
                 {k: v for k, v in t0.items() if k != "text_projection"})
    assert changed(t1["text_projection"], t0["text_projection"])

    # Adam moments exist only for what trains: visual proj + ln_post + 1 block row, text proj,
    # logit scale
    mu = state["opt_state"].adamw[0].mu
    moment_elements = sum(x.size for x in jax.tree.leaves(mu))
    blocks = before["visual"]["transformer"]["resblocks"]
    expected = (v0["proj"].size + v0["ln_post"]["scale"].size * 2
                + sum(x.size // 2 for x in jax.tree.leaves(blocks))
                + t0["text_projection"].size + 1)
    assert moment_elements == expected
    full = count_params(before)
    assert moment_elements < full / 2  # most of the model holds no moments
    # sliced moments keep their parameter's sharding
    kernel_mu = [x for x in jax.tree.leaves(mu) if x.shape == (1, 16, 64)]
    assert kernel_mu and kernel_mu[0].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor")


def test_locked_resnet_keeps_batch_norm_statistics_frozen():
    config = tiny_train_config()
    config.model.image.update(tower="resnet", resnet_depth=18, resnet_width=8)
    config.train.update(lock_image=True, lock_image_unlocked_layers=1)
    before, after, _, _ = run(config, jax.devices()[:1])  # step 1 has lr 0 (warmup)
    v0, v1 = before["visual"], after["visual"]
    jax.tree.map(np.testing.assert_array_equal, [v1["bn1"], v1["conv1"], v1["layer1"],
                                                 v1["layer3"]],
                 [v0["bn1"], v0["conv1"], v0["layer1"], v0["layer3"]])
    # the unlocked last stage trains, weights and running statistics
    block = v1["layer4"]["0"] if "0" in v1["layer4"] else v1["layer4"][0]
    block0 = v0["layer4"]["0"] if "0" in v0["layer4"] else v0["layer4"][0]
    assert changed(block["conv1"]["kernel"], block0["conv1"]["kernel"])
    assert changed(block["bn1"]["mean"], block0["bn1"]["mean"])


@pytest.mark.parametrize("key,value", [("train.lock_image_unlocked_layers", -1),
                                       ("train.lock_text_unlocked_layers", 2)])
def test_config_check(key, value):
    config = tiny_train_config()
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=key):
        validate(config, check_paths=False)
