"""Weight EMA (train/ema.py): timm ModelEmaV3's decay schedule, the average equal to a NumPy
recurrence over the trained params, kept in checkpoints (exact resume; a checkpoint without it
restores), evaluated with `ema/` keys, exported with `--ema`."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.utils.model_ema import ModelEmaV3

from synthclip_jax import sharding
from synthclip_jax.config.base import base
from synthclip_jax.data import shapes_demo
from synthclip_jax.data.source import make_train_source
from synthclip_jax.train import ema, loop
from synthclip_jax.train.checkpoint import Checkpointer, load_params
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_train_parallel import tiny_train_config
from tools import convert_to_openclip


def ema_config(decay=0.6, warmup=True):
    c = tiny_train_config()
    c.train.ema_decay, c.train.ema_warmup = decay, warmup
    return c


@pytest.mark.parametrize("warmup", [True, False])
def test_decay_schedule_is_timms(warmup):
    config = ema_config(decay=0.99, warmup=warmup)
    reference = ModelEmaV3(torch.nn.Linear(1, 1), decay=0.99, use_warmup=warmup)
    for t in [0, 1, 2, 3, 10, 100, 1000, 10_000]:
        np.testing.assert_allclose(float(ema.decay_at(config, t)), reference.get_decay(t),
                                   rtol=1e-6, err_msg=f"t={t}")


@pytest.mark.slow
def test_average_equals_numpy_recurrence_on_8_devices():
    """d = 0.6 with warmup: the first update copies, the warmup then caps at 0.6 from t = 3."""
    config = ema_config()
    config.mesh.data = 8
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    setup = make_train_setup(config, mesh)
    state, train_step = setup.init(), make_train_step(config, setup, mesh)
    np.testing.assert_array_equal(*jax.tree.leaves(  # starts at the init params
        jax.device_get((state["ema"]["logit_scale"], state["params"]["logit_scale"]))))
    data = make_train_source(config)
    expected = jax.tree.map(np.asarray, jax.device_get(state["params"]))
    for t in range(1, 5):
        state, _ = train_step(state, sharding.global_batch(next(data), mesh))
        params = jax.device_get(state["params"])
        d = 0.0 if t <= 1 else min(0.6, 1 - t ** (-2 / 3))  # timm: 1 - (1 + (t - 1))^-2/3
        expected = jax.tree.map(lambda e, p: e + (1 - d) * (p - e), expected, params)
    got = jax.device_get(state["ema"])
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7), got,
                 expected)
    # the average lags the params: it is not just a copy
    assert not np.allclose(got["visual"]["proj"], params["visual"]["proj"])


def test_checkpoint_without_average_restores_it_from_params(tmp_path):
    mesh = sharding.make_mesh(base().mesh, jax.devices()[:1])
    rep = sharding.replicated(mesh)
    old = {"step": jnp.int32(7), "params": {"w": jnp.arange(3.0)}}
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(7, old, {"position": 1})
    ckpt.close()
    abstract = {k: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                                old[v]) for k, v in (("step", "step"), ("params", "params"),
                                                     ("ema", "params"))}
    ckpt = Checkpointer(tmp_path, keep=2)
    state, data_state = ckpt.restore(7, abstract)
    ckpt.close()
    np.testing.assert_array_equal(state["ema"]["w"], [0.0, 1.0, 2.0])
    assert int(state["step"]) == 7 and data_state == {"position": 1}


def demo_config(total_steps):
    c = tiny_train_config()
    c.total_steps, c.batch_size, c.warmup_steps = total_steps, 8, 1
    c.data.source, c.data.train, c.data.image_size = "tfrecord", "", 16
    c.data.procedural.update(num_train=64, num_retrieval=16, zeroshot_per_class=1,
                             image_size=16)
    c.data.num_workers, c.data.device_prefetch = 0, 0
    c.eval.update(templates="shapes", batch_size=16)
    c.checkpoint.every_steps, c.log.every_steps = 2, 1
    c.model.text.update(vocab_size=49408, context_length=16)
    c.train.ema_decay = 0.5
    return c


def train(workdir, total_steps, data_dir, evaluate=False):
    config = demo_config(total_steps)
    config.eval.every_steps = 4 if evaluate else 0
    shapes_demo.prepare(config, data_dir)
    workdir.mkdir(exist_ok=True)
    (workdir / "config.json").write_text(config.to_json())  # as main.py writes it
    loop.train(config, workdir, devices=jax.devices()[:1])


@pytest.mark.slow
def test_run_resumes_evaluates_and_exports_the_average(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, 4, tmp_path, evaluate=True)
    # the straight run's step-2 checkpoint, resumed to step 4 by a fresh loop
    shutil.copytree(straight / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / "4")
    train(resumed, 4, tmp_path)
    _, a, _ = load_params(straight, ema=True)
    _, b, step = load_params(resumed, ema=True)
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, a, b)  # resume is exact for the average
    _, raw, _ = load_params(straight)
    assert not np.array_equal(raw["visual"]["proj"], a["visual"]["proj"])

    rows = [json.loads(x) for x in (straight / "eval.jsonl").read_text().splitlines()]
    assert {"retrieval/i2t_R@1", "ema/retrieval/i2t_R@1", "ema/zeroshot/top1"} <= set(rows[-1])
    # --mode=eval evaluates the average too, to the same numbers
    from synthclip_jax.evaluate.latest import evaluate_latest
    config = demo_config(4)
    shapes_demo.prepare(config, tmp_path)
    again = evaluate_latest(config, straight, devices=jax.devices()[:1])
    assert again["ema/retrieval/i2t_R@1"] == rows[-1]["ema/retrieval/i2t_R@1"]

    assert convert_to_openclip.main(["--workdir", str(straight), "--out",
                                     str(tmp_path / "out"), "--ema"]) == 0
    from safetensors.numpy import load_file
    exported = load_file(str(tmp_path / "out" / "open_clip_model.safetensors"))
    np.testing.assert_array_equal(exported["visual.proj"], a["visual"]["proj"])
