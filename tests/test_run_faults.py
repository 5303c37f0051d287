"""Faults found early and named, and a failing evaluation that keeps the training it follows."""
import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from synthclip_jax.config.error import ConfigError
from synthclip_jax.data import pipeline
from synthclip_jax.data.shapes_demo import write_shards
from synthclip_jax.evaluate import zeroshot
from synthclip_jax.evaluate.evaluator import Evaluator
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train import loop
from synthclip_jax.train.checkpoint import Checkpointer
from tests.test_pipeline import data_config, write_dataset
from tests.test_train_tfrecord import config_for


@pytest.mark.parametrize("records", [0, 5])
def test_fewer_records_than_one_batch_is_refused(tmp_path, records):
    """A batch would repeat pairs (each its own false negative); 0 records used to end in a
    bare StopIteration."""
    pattern = write_dataset(tmp_path, n=records, num_shards=1)
    with pytest.raises(ConfigError, match=f"holds {records} records, fewer than one batch "
                                          r"\(batch_size=8\)") as raised:
        pipeline.make_grain_source(data_config(pattern), 0, 1)
    assert raised.value.key == "batch_size"


def zeroshot_folder(root, junk: bool):
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (20, 20), color).save(root / name / "a.png")
    if junk:
        (root / "blue" / "notes.jpg").write_text("not an image")
    return root


def test_undecodable_zeroshot_image_is_named_at_start(tmp_path):
    """Loaded before the first step (Evaluator.load), the error names the file."""
    config = data_config("unused")
    config.eval.zeroshot = str(zeroshot_folder(tmp_path / "zs", junk=True))
    config.eval.every_steps = 1
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
    evaluator = Evaluator(config, nnx.graphdef(nnx.eval_shape(lambda: build_model(config, 0))),
                          mesh, tmp_path / "run", resume_step=0)
    with pytest.raises(ValueError, match=r"cannot decode .*blue/notes\.jpg"):
        evaluator.load()


@pytest.mark.slow
def test_failing_evaluation_keeps_the_steps_since_the_last_checkpoint_and_the_rerun_evaluates(
        tmp_path, monkeypatch):
    """The checkpoint of step 3 is saved before the evaluation fails (as after a kill between
    an evaluation step's checkpoint and its eval.jsonl row): the rerun evaluates step 3 first."""
    (tmp_path / "data").mkdir()
    config = config_for(write_shards(tmp_path / "data", "shapes", 0, 64, 2, seed=0,
                                     image_size=40), workers=0)
    config.total_steps, config.checkpoint.every_steps = 3, 100
    config.eval.zeroshot = str(zeroshot_folder(tmp_path / "zs", junk=False))
    config.eval.every_steps = 3

    def device_lost(*args, **kwargs):  # an evaluation fault after 3 unsaved steps
        raise RuntimeError("device lost during evaluation")

    monkeypatch.setattr(zeroshot, "evaluate", device_lost)
    with pytest.raises(RuntimeError, match="device lost"):
        loop.train(config, tmp_path / "run", devices=jax.devices())
    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", keep=3)
    assert checkpointer.latest_step() == 3
    checkpointer.close()
    eval_rows = tmp_path / "run" / "eval.jsonl"
    assert not eval_rows.exists() or not eval_rows.read_text().strip()

    monkeypatch.undo()
    loop.train(config, tmp_path / "run", devices=jax.devices())
    rows = [json.loads(line) for line in eval_rows.read_text().splitlines()]
    assert [r["step"] for r in rows] == [3] and "zeroshot/top1" in rows[0]
