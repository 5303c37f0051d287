"""Training stages (train/stages.py): a run at 8 px with patch dropout, 8-token text rows of
4-token partial captions and batch 8 switching to 16 px, the whole 16-token context and batch
16 resumes exactly right before and right after the switch (from the straight run's
checkpoints, by a fresh trainer), its metrics carry the stage and the examples seen, its input
continues at the next example, its position embeddings are resized at the switch as OpenCLIP's
resize_pos_embed would, its short text reads the first position embeddings as OpenCLIP's text
tower of that context, and bad stage lists fail at the door."""
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

STAGES = (dict(steps=3, image_size=8, patch_dropout=0.5, context_length=8,
               partial_caption_tokens=4),
          dict(fraction=0.4, lr_scale=0.5, batch_size=16))


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
    assert [s.config.data.train_context_length for s in stages] == [8, 0]
    assert [s.config.batch_size for s in stages] == [8, 16]
    assert [s.config.data.partial_caption_tokens for s in stages] == [4, 0]
    assert [(s.examples_before, s.examples_after) for s in stages] == [(0, 32), (24, 0)]
    validate(staged_config(), check_paths=False)
    for stages_value, key in [((dict(steps=3),), "train.stages"),
                              ((dict(steps=3, batch_size=6), dict(steps=2)),
                               "train.stages[0].batch_size"),  # grad_accum_steps=4
                              ((dict(steps=3, context_length=17), dict(steps=2)),
                               "train.stages[0].context_length"),
                              ((dict(steps=3, context_length=8, partial_caption_tokens=7),
                                dict(steps=2)), "train.stages[0].partial_caption_tokens"),
                              ((dict(steps=3, image_size=12), dict(steps=2, image_size=8)),
                               "train.stages[-1].image_size"),
                              ((dict(steps=3, fraction=0.5), dict(steps=2)), "train.stages[0]")]:
        c = staged_config()
        c.train.grad_accum_steps = 4 if "batch_size" in key else 1
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
    assert [m["examples_seen"] for m in metrics] == [8, 16, 24, 40, 56]
    assert data_state(straight, 5)["global_examples"] == 56
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


def data_state(workdir, step):
    import orbax.checkpoint as ocp
    return ocp.JsonCheckpointHandler().restore(workdir / "checkpoints" / str(step) / "data")


def test_batch_switch_continues_at_the_next_example(tmp_path):
    """Stage 1's first batch of 16 (built at the 24 examples stage 0 consumed) holds examples
    24-39: batches 3 and 4 of a batch-8 pipeline of the same shapes, which never switched;
    stage 0's text rows are 8 tokens long, stage 1's the model's 16."""
    from synthclip_jax.data.source import make_train_source
    config = staged_config()
    shapes_demo.prepare(config, tmp_path)
    first, second = plan(config)
    short = next(make_train_source(first.config))
    assert short["text"].shape == (8, 8) and short["image"].shape[1] == 8
    # stage 0's partial captions: SOT, at most 4 caption tokens, EOT
    assert ((short["text"] != 0).sum(1) == 6).all()
    switched = make_train_source(second.config)
    switched.set_state({**switched.get_state(), "global_examples": 24})
    batch = next(switched)
    reference = second.config.copy_and_resolve_references()
    reference.batch_size = 8
    source = make_train_source(reference)
    unswitched = [next(source) for _ in range(5)][3:]
    for key in ("image", "text"):
        np.testing.assert_array_equal(batch[key], np.concatenate([b[key] for b in unswitched]))
    assert batch["text"].shape == (16, 16)


@pytest.mark.slow  # torch + open_clip import
def test_short_text_reads_the_first_positions_as_openclip(tmp_path, caplog):
    """8-token rows through a 16-position text tower = OpenCLIP's text tower of context 8
    holding the table's first 8 rows (CLIPA's short-text training)."""
    import copy
    torch = pytest.importorskip("torch")
    from synthclip_jax.data.tokenizer import tokenize
    from synthclip_jax.export.openclip import export_openclip
    from tests.test_convert_openclip import (TEXTS, jax_forward, load_openclip, random_params,
                                             tiny_config)
    config = tiny_config()
    params = random_params(config)
    short_config, short_params = copy.deepcopy(config), copy.deepcopy(params)
    short_config.model.text.context_length = 8
    short_params["text"]["positional_embedding"] = params["text"]["positional_embedding"][:8]
    export_openclip(short_config, short_params, tmp_path)
    model, _, _ = load_openclip(tmp_path, caplog)
    tokens = tokenize(TEXTS, 8)
    images = np.zeros((len(TEXTS), 32, 32, 3), np.float32)
    _, ours, _ = jax_forward(config, params, images, tokens)
    with torch.no_grad():
        theirs = model.encode_text(torch.from_numpy(tokens.astype(np.int64)), normalize=True)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


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
