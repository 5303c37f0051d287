"""The CLIPS captioner: its attention mask (vs a NumPy construction and in effect), overfitting a
handful of pairs through the real train step with greedy decoding giving the training captions
back, its placement on an 8-device mesh, the export, and an exact resume mid-epoch."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.data.shapes_demo import write_shards
from synthclip_jax.data.text_tokenizer import caption_targets, tokenizer_of
from synthclip_jax.data.tokenizer import EOT_ID, SOT_ID, tokenize
from synthclip_jax.models.captioner import cross_causal_mask
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train import loop
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_train_parallel import tiny_train_config


def numpy_mask(prefix_len, num_queries):
    """Blocks: [[prefix sees prefix, not queries], [queries see prefix, lower triangle]]."""
    s = prefix_len + num_queries
    mask = np.zeros((s, s), bool)
    mask[:prefix_len, :prefix_len] = True
    mask[prefix_len:, :prefix_len] = True
    mask[prefix_len:, prefix_len:] = np.tril(np.ones((num_queries, num_queries), bool))
    return mask


@pytest.mark.parametrize("prefix_len,num_queries", [(5, 4), (1, 1), (17, 128)])
def test_mask_equals_numpy(prefix_len, num_queries):
    np.testing.assert_array_equal(cross_causal_mask(prefix_len, num_queries),
                                  numpy_mask(prefix_len, num_queries))


def clips_config(mesh=(1, 1, 1), queries=8):
    c = tiny_train_config("softmax", mesh)
    c.data.source = "tfrecord"
    c.model.text.update(vocab_size=49408, context_length=12)
    c.model.captioner.update(enabled=True, width=32, depth=2, heads=2, num_queries=queries)
    c.loss.two_captions = True
    return c


def test_query_q_sees_only_earlier_tokens():
    model = build_model(clips_config(), 0)
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    web = jnp.asarray(tokenize(["a red circle", "a blue square"], 12))
    inputs = jnp.asarray(tokenize(["one large red circle on grey", "a b c d e f"], 9))[:, :-1]
    base = model.clips_outputs(images, web, inputs)[1]
    changed = inputs.at[:, 4].set(500)  # the token fed to query 4
    after = model.clips_outputs(images, web, changed)[1]
    np.testing.assert_allclose(after[:, :4], base[:, :4], atol=1e-6)  # queries 0-3: untouched
    assert not np.allclose(after[:, 4:], base[:, 4:], atol=1e-3)
    other_web = web.at[:, 2].set(320)  # the prefix reaches every query
    assert not np.allclose(model.clips_outputs(images, other_web, inputs)[1][:, 0],
                           base[:, 0], atol=1e-3)


VOCAB = 64  # a small vocabulary: a fast vocabulary head
WEB = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
FULL = ["a large red circle at the top left", "a small blue square at the bottom right",
        "a large green triangle at the center", "a small yellow circle at the top right"]


def word_config(mesh=(1, 1, 1)):
    config = clips_config(mesh, queries=9)
    config.model.text.vocab_size = VOCAB
    return config


def wordpiece_config(tmp_path):
    """CLIPS's WordPiece layout on a small vocab.txt: the vocabulary (and the captioner's head)
    is the tokenizer's, its start/end ids BOS=1/EOS=2."""
    from tests.test_clips_tokenizer import write_vocab
    vocab = write_vocab(tmp_path / "vocab.txt", " ".join(WEB + FULL).split())
    config = clips_config(queries=9)
    config.model.text.update(tokenizer="clips_wordpiece", vocab_path=vocab)
    config.model.text.vocab_size = tokenizer_of(config.model.text).vocab_size
    return config


def overfit_batch(config, n_copies=4):
    """The 4 pairs, each n_copies times, in the config's tokenizer."""
    tok = tokenizer_of(config.model.text)
    rng = np.random.default_rng(0)
    images = np.repeat(rng.normal(size=(4, 16, 16, 3)).astype(np.float32), n_copies, 0)
    web = np.repeat(tok(WEB, 12), n_copies, 0)
    partial = np.repeat(tok([f.split(" at ")[0] for f in FULL], 12), n_copies, 0)
    caption = np.repeat(caption_targets(tok, FULL, 10), n_copies, 0)
    return {"image": images, "text": partial, "web_text": web, "caption": caption}


@pytest.mark.slow
def test_overfits_and_greedy_decoding_gives_the_captions_back(tmp_path):
    """With CLIPS's WordPiece tokenizer: targets, decoding ids and vocabulary are its own."""
    config = wordpiece_config(tmp_path)
    config.lr, config.warmup_steps, config.total_steps = 3e-3, 5, 80
    config.optim.lr_end, config.weight_decay = 3e-3, 0.0  # constant after the warmup
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_train_setup(config, mesh)
    state, step = setup.init(), make_train_step(config, setup, mesh)
    batch = sharding.global_batch(overfit_batch(config), mesh)
    first = None
    for _ in range(config.total_steps):
        state, metrics = step(state, batch)
        first = first or {k: float(v) for k, v in metrics.items()}
    last = {k: float(v) for k, v in metrics.items()}
    assert last["caption_loss"] < 0.02 < first["caption_loss"]
    np.testing.assert_allclose(  # the logged total is the weighted sum of the logged parts
        last["loss"], 2.0 * last["caption_loss"] + last["contrastive_loss"], rtol=1e-5)
    model = nnx.merge(setup.graphdef, state["params"])
    pairs = overfit_batch(config, 1)
    # start/end ids from the config's tokenizer (BOS=1, EOS=2)
    decoded = model.caption(jnp.asarray(pairs["image"]), jnp.asarray(pairs["web_text"]))
    np.testing.assert_array_equal(decoded, pairs["caption"][:, 1:])


def test_captioner_is_placed_by_the_logical_axis_rules():
    """Each captioner parameter declares logical axes (as the towers' do), so FSDP and tensor
    parallelism shard it by the config's rules."""
    config = word_config((2, 2, 2))
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    abstract = nnx.split(nnx.eval_shape(lambda: build_model(config, 0)))[1]
    shardings = sharding.param_shardings(abstract, mesh, config.mesh.rules)
    specs = {k: tuple(v.spec) for k, v in _flat(shardings["captioner"]).items()}
    assert specs["token_embedding"] == ("tensor", "fsdp")  # vocab -> tensor, embed -> fsdp
    assert specs["head"] == ("fsdp", "tensor")
    assert specs["query_tokens"] == (None, "fsdp")
    assert specs["transformer/resblocks/in_proj_kernel"] == (None, "fsdp", None, "tensor", None)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def rows(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_mid_epoch_with_the_captioner_is_exact(tmp_path):
    (tmp_path / "data").mkdir()
    pattern = write_shards(tmp_path / "data", "shapes", 0, 40, 2, seed=0, image_size=20,
                           web_captions=True)
    config = clips_config(queries=24)
    config.data.update(train=pattern, num_workers=0, text_reduction="block",
                       partial_caption_tokens=6)
    config.total_steps, config.checkpoint.every_steps, config.log.every_steps = 6, 3, 1
    straight = tmp_path / "straight"
    loop.train(config, straight, devices=jax.devices()[:1])
    crashed = tmp_path / "crashed"  # 40 records, 16 a batch: step 3 ends mid-epoch
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "6")
    loop.train(config, crashed, devices=jax.devices()[:1])
    keys = ("step", "loss", "caption_loss", "contrastive_loss")
    a = [[r[k] for k in keys] for r in rows(straight)]
    b = [[r[k] for k in keys] for r in rows(crashed)]
    assert [r[0] for r in a] == [r[0] for r in b] == list(range(1, 7))
    np.testing.assert_allclose(b, a, rtol=1e-6)


def test_export_writes_towers_as_before_and_the_decoder_in_its_own_format(tmp_path):
    from synthclip_jax.export.captioner import export_captioner, load_captioner, split_captioner
    from synthclip_jax.export.openclip import ExportError, openclip_state_dict
    config = word_config()
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(config, 0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract)
    with pytest.raises(ExportError, match="captioner"):  # never dropped silently
        openclip_state_dict(params)
    towers, decoder = split_captioner(params)
    assert "captioner" not in towers and openclip_state_dict(towers)
    export_captioner(config, decoder, tmp_path)
    meta, loaded = load_captioner(tmp_path)
    assert (meta["width"], meta["depth"], meta["heads"], meta["num_queries"]) == (32, 2, 2, 9)
    assert meta["vocab_size"] == VOCAB and meta["layernorm_eps"] == config.model.layernorm_eps
    assert (meta["tokenizer"], meta["start_id"], meta["end_id"], meta["pad_id"]) == (
        "openclip_bpe", SOT_ID, EOT_ID, 0)
    jax.tree.map(np.testing.assert_array_equal, loaded, decoder)
    assert meta["tensors"]["transformer.resblocks.in_proj_kernel"] == [2, 32, 3, 2, 16]
