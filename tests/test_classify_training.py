"""train.task='classify' end to end: class images drawn by data_gen.images (--prompts
classnames, shapes backend) -> data_gen.write TFRecords with `label` -> the classifier learns
(held-out top-1 far above chance, eval.classify) and resumes exactly; the loss is torch's
CrossEntropyLoss(label_smoothing); sharded and accumulated steps equal the plain one."""
import json
import shutil

import jax
import numpy as np
import pytest

from configs import classify_cpu
from data_gen import images as images_stage
from data_gen import write as write_stage
from synthclip_jax import sharding
from synthclip_jax.train import loop
from synthclip_jax.train.checkpoint import load_params

CLASSES = "data_gen/shape_classes.txt"  # 8 classes


def class_records(root, name, per_class, seed):
    assert images_stage.main(["--prompts", "classnames", CLASSES, "--backend", "shapes",
                              "--images-per-prompt", str(per_class), "--save-size", "32",
                              "--seed", str(seed), "--out", str(root / f"{name}_pairs")]) == 0
    assert write_stage.main(["--pairs", str(root / f"{name}_pairs" / "*.tar"), "--out",
                             str(root / name), "--num-shards", "2", "--quiet"]) == 0
    return str(root / name / "*.tfrecord")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    return class_records(root, "train", 16, 42), class_records(root, "val", 6, 7)


def tiny_config(train, val, **over):
    c = classify_cpu.get_config()
    c.model.image.update(width=32, depth=1, heads=2, patch_size=8)
    c.data.update(train=train, read_threads=2)
    c.eval.update(classify=f"val={val}", every_steps=40, batch_size=48)
    c.batch_size, c.total_steps, c.warmup_steps, c.lr = 32, 40, 4, 3e-3
    c.checkpoint.every_steps, c.log.every_steps = 20, 1
    for key, value in over.items():
        node, *path = key.split(".")
        target = c[node]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return c


def losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """40 steps data-parallel over the 8 devices, checkpoints at 20 and 40, eval at 40."""
    config = tiny_config(*data)
    workdir = tmp_path_factory.mktemp("straight")
    (workdir / "config.json").write_text(config.to_json_best_effort())  # for load_params
    loop.train(config, workdir, devices=jax.devices())
    return config, workdir


@pytest.mark.slow
def test_learns_and_resumes_exactly(straight, tmp_path):
    config, workdir = straight
    evals = [json.loads(x) for x in (workdir / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 40
    assert evals[-1]["classify/val/top1"] >= 0.6, evals  # chance: 1/8
    assert evals[-1]["classify/val/ce"] < np.log(8)
    # a crash after the step-20 checkpoint: the step-40 one never got written
    crashed = tmp_path / "crashed"
    shutil.copytree(workdir, crashed)
    shutil.rmtree(crashed / "checkpoints" / "40")
    loop.train(config, crashed, devices=jax.devices())
    a, b = losses(workdir), losses(crashed)
    assert sorted(b) == list(range(1, 41))
    np.testing.assert_allclose([b[s] for s in range(21, 41)], [a[s] for s in range(21, 41)],
                               rtol=1e-6)
    pa, pb = load_params(workdir)[1], load_params(crashed)[1]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa, pb)


def test_loss_is_torch_cross_entropy_with_label_smoothing():
    torch = pytest.importorskip("torch")
    from synthclip_jax.models.classifier import ClassifyOutputs
    from synthclip_jax.train.classify_loss import make_classify_loss
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 6).astype(np.int32)
    for smoothing in (0.0, 0.1):
        config = classify_cpu.get_config()
        config.loss.label_smoothing = smoothing
        ours = float(make_classify_loss(config)(ClassifyOutputs(logits, labels)))
        theirs = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(
            torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64))).item()
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_sharded_and_accumulated_steps_equal_the_plain_run(data, straight):
    """fsdp x tensor x data (2, 2, 2) with 2 micro-batches: the losses of the data-parallel,
    unaccumulated run (the same seed, data order and initial weights)."""
    from synthclip_jax.data.source import make_train_source
    from synthclip_jax.train.state import make_train_setup
    from synthclip_jax.train.step import make_train_step
    config = tiny_config(*data, **{"train.grad_accum_steps": 2})
    config.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    setup = make_train_setup(config, mesh)
    state, step = setup.init(), make_train_step(config, setup, mesh)
    source = make_train_source(config)
    got = []
    for _ in range(3):
        state, metrics = step(state, sharding.global_batch(next(source), mesh))
        got.append(float(metrics["loss"]))
    plain = losses(straight[1])
    np.testing.assert_allclose(got, [plain[s] for s in (1, 2, 3)], rtol=1e-5)
