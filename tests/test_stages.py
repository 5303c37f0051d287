"""Training stages (train/stages.py): a run at 8 px with patch dropout switching to 16 px
resumes exactly right before and right after the switch (from the straight run's checkpoints,
by a fresh trainer), its metrics carry the stage, its position embeddings are resized at the
switch as OpenCLIP's resize_pos_embed would, and bad stage lists fail at the door."""
import json
import shutil

import jax
import numpy as np
import pytest

from synthclip_jax.config.check import validate
from synthclip_jax.config.error import ConfigError
from synthclip_jax.data import shapes_demo
from synthclip_jax.models.pos_embed import resize_image_pos
from synthclip_jax.train import loop
from synthclip_jax.train.checkpoint import load_params
from synthclip_jax.train.stages import plan
from tests.test_ema import demo_config

STAGES = (dict(steps=3, image_size=8, patch_dropout=0.5), dict(fraction=0.4, lr_scale=0.5))


def staged_config():
    c = demo_config(total_steps=5)
    c.train.ema_decay = 0.0
    c.checkpoint.update(every_steps=1, keep=10)
    c.train.stages = STAGES
    return c


def train(workdir, data_dir):
    config = staged_config()
    shapes_demo.prepare(config, data_dir)
    workdir.mkdir(exist_ok=True)
    (workdir / "config.json").write_text(config.to_json())
    loop.train(config, workdir, devices=jax.devices()[:1])


def rows(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_plan_and_config_check():
    stages = plan(staged_config())
    assert [(s.start, s.end) for s in stages] == [(0, 3), (3, 5)]
    assert [s.config.data.image_size for s in stages] == [8, 16]
    assert [s.config.model.image.patch_dropout for s in stages] == [0.5, 0.0]
    assert stages[1].config.lr == staged_config().lr * 0.5
    validate(staged_config(), check_paths=False)
    for stages_value, key in [((dict(steps=3),), "train.stages"),
                              ((dict(steps=3, batch_size=8), dict(steps=2)),
                               "train.stages[0].batch_size"),
                              ((dict(steps=3, image_size=12), dict(steps=2, image_size=8)),
                               "train.stages[-1].image_size"),
                              ((dict(steps=3, fraction=0.5), dict(steps=2)), "train.stages[0]")]:
        c = staged_config()
        c.train.stages = stages_value
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            validate(c, check_paths=False)


@pytest.mark.slow
def test_switch_resumes_exactly_before_and_after(tmp_path):
    straight = tmp_path / "straight"
    train(straight, tmp_path)
    _, final, step = load_params(straight)
    assert step == 5
    metrics = rows(straight)
    assert [m["stage"] for m in metrics] == [0, 0, 0, 1, 1]
    # the switch resized the embeddings: 1 + 2x2 rows at 8 px -> 1 + 4x4 at 16 px
    import orbax.checkpoint as ocp
    at_switch = ocp.PyTreeCheckpointHandler().metadata(straight / "checkpoints" / "3" / "state")
    assert at_switch.tree["params"]["visual"]["positional_embedding"].shape == (5, 16)
    assert final["visual"]["positional_embedding"].shape == (17, 16)
    for stop_at in (3, 4):  # right before the switch, right after it
        resumed = tmp_path / f"resumed_{stop_at}"
        shutil.copytree(straight / "checkpoints", resumed / "checkpoints")
        for step_dir in (resumed / "checkpoints").iterdir():
            if step_dir.name.isdigit() and int(step_dir.name) > stop_at:
                shutil.rmtree(step_dir)
        train(resumed, tmp_path)
        _, params, _ = load_params(resumed)
        jax.tree.map(np.testing.assert_array_equal, params, final)
        assert [m["loss"] for m in rows(resumed)] == [m["loss"] for m in metrics][stop_at:]


def test_carry_over_resizes_like_openclip(tmp_path):
    """The stage switch's resize of a trained 2x2 grid to 4x4 equals models/pos_embed.py,
    which equals OpenCLIP's resize_pos_embed (tests/test_pos_embed.py)."""
    from synthclip_jax import sharding
    from synthclip_jax.train.stages import carry_over
    from synthclip_jax.train.state import make_train_setup
    stages = plan(staged_config())
    mesh = sharding.make_mesh(stages[0].config.mesh, jax.devices()[:1])
    old, new = (make_train_setup(s.config, mesh) for s in stages)
    state = old.init()
    moved = carry_over(state, old.abstract_state, new.abstract_state)
    pos = np.asarray(state["params"]["visual"]["positional_embedding"])
    np.testing.assert_array_equal(moved["params"]["visual"]["positional_embedding"],
                                  resize_image_pos(pos, 17))
    mu = moved["opt_state"].adamw[0].mu["visual"]["positional_embedding"]
    assert mu.shape == (17, 16) and not np.asarray(mu).any()
    np.testing.assert_array_equal(moved["params"]["visual"]["proj"],
                                  state["params"]["visual"]["proj"])
