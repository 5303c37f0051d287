"""JAX -> OpenCLIP export: the PyTorch model loaded with `local-dir:` computes our function.

Parity is measured as max|torch - jax| / max|jax| over image features, text features and
logits, in float32, on random images and real BPE tokens. Parameters are randomised beyond
their init (LayerNorm scales/biases, biases) so that a swapped or missing tensor shows.
"""
import json
import logging
import math
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="the export parity tests run the PyTorch model")
open_clip = pytest.importorskip("open_clip", reason="the export target is open_clip_torch")

from synthclip_jax.config.base import base  # noqa: E402
from synthclip_jax.data.tokenizer import tokenize  # noqa: E402
from synthclip_jax.models.two_tower import build_model  # noqa: E402
from synthclip_jax.train.checkpoint import load_params  # noqa: E402
from tests.test_models import set_model_keys  # noqa: E402
from synthclip_jax.export import openclip as conv  # noqa: E402
from tools import convert_to_openclip as cli  # noqa: E402

TOL = 1e-5
TEXTS = ["a photo of a red circle", "two blue squares on a white background", "x",
         "a very long caption " * 6]


def tiny_config(**model):
    c = base()
    c.data.image_size = 32
    c.model.embed_dim = 16
    c.model.image.update(width=32, depth=2, heads=4, patch_size=8)
    c.model.text.update(width=32, depth=2, heads=4, context_length=16, vocab_size=49408)
    return set_model_keys(c, model)


def random_params(config, seed=0):
    """Init params with every leaf perturbed (LN scales/biases and biases are 1/0 at init)."""
    params = nnx.to_pure_dict(nnx.state(build_model(config, seed)))
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [np.asarray(x, np.float32) + 0.1 * rng.standard_normal(np.shape(x)).astype(np.float32)
              for x in leaves]
    return jax.tree.unflatten(treedef, leaves)


def jax_forward(config, params, images_nhwc, tokens):
    graphdef, state = nnx.split(build_model(config, 0))
    nnx.replace_by_pure_dict(state, params)
    img, txt, scale, bias = nnx.merge(graphdef, state)(images_nhwc, tokens)
    img, txt = np.asarray(img), np.asarray(txt)
    return img, txt, math.exp(float(scale)) * img @ txt.T + float(bias)


def inputs(config, seed=1):
    s = config.data.image_size
    images = np.random.default_rng(seed).standard_normal((3, s, s, 3)).astype(np.float32)
    return images, tokenize(TEXTS, config.model.text.context_length)


def load_openclip(out_dir, caplog):
    """create_model_and_transforms('local-dir:...') with no warnings (strict state_dict load)."""
    torch.set_default_dtype(torch.float32)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out_dir}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{out_dir}")
    assert not caught, [str(w.message) for w in caught]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    return model.eval(), preprocess, tokenizer


def torch_forward(model, images_nhwc, tokens):
    with torch.no_grad():
        x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(torch.from_numpy(tokens.astype(np.int64)), normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        if model.logit_bias is not None:
            logits = logits + model.logit_bias
    return img.numpy(), txt.numpy(), logits.numpy()


def rel_errors(ours, theirs):
    return {name: float(np.abs(t - o).max() / np.abs(o).max())
            for name, o, t in zip(("image", "text", "logits"), ours, theirs)}


def openclip_parity(config, params, out_dir, caplog, patch_cfg=None):
    conv.export_openclip(config, params, out_dir)
    if patch_cfg:  # simulate a converter that wrote the wrong config
        path = out_dir / "open_clip_config.json"
        cfg = json.loads(path.read_text())
        patch_cfg(cfg["model_cfg"])
        path.write_text(json.dumps(cfg))
    model, _, tokenizer = load_openclip(out_dir, caplog)
    images, tokens = inputs(config)
    np.testing.assert_array_equal(tokenizer(TEXTS).numpy(), tokens)
    errs = rel_errors(jax_forward(config, params, images, tokens),
                      torch_forward(model, images, tokens))
    print(f"\n{out_dir.name}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    return model, errs


CASES = {
    "cls_causal_gelu": {},
    "avg_pool": {"image.pool_type": "avg"},
    "no_ln_pre": {"image.ln_pre": False},
    "gelu_tanh": {"activation": "gelu_tanh"},
    "quick_gelu": {"activation": "quick_gelu"},
    "bidir_last": {"text.causal": False, "text.pool_type": "last"},
    "bidir_argmax": {"text.causal": False},
    "causal_last": {"text.pool_type": "last"},
    "eps_1e-5": {"layernorm_eps": 1e-5},
    "sigmoid_bias": {"logit_bias_init": -10.0, "logit_scale_init": math.log(10.0)},
    # per-tower options (OpenCLIP's per-tower norm_kwargs / act_kwargs)
    "per_tower_eps_act": {"image.layernorm_eps": 1e-6, "text.layernorm_eps": 1e-5,
                          "image.activation": "gelu", "text.activation": "gelu_tanh"},
    "patch_bias_folded": {"image.patch_bias": True, "image.ln_pre": False},
    "avg_ln_after_pool": {"image.pool_type": "avg", "image.final_ln_after_pool": True,
                          "image.ln_pre": False},
    "text_ln_after_pool": {"text.causal": False, "text.pool_type": "last",
                           "text.final_ln_after_pool": True},
}


@pytest.mark.parametrize("case", CASES)
def test_openclip_parity(case, tmp_path, caplog):
    config = tiny_config(**CASES[case])
    out = tmp_path / case
    model, errs = openclip_parity(config, random_params(config), out, caplog)
    assert type(model).__name__ == "CLIP"  # native CLIP: text keys at the top level
    assert (model.logit_bias is not None) == (config.model.logit_bias_init is not None)
    assert max(errs.values()) <= TOL, errs
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", conv.WEIGHTS_NAME]


def test_config_contents():
    config = tiny_config(activation="gelu_tanh", layernorm_eps=1e-6)
    config.data.mean, config.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    cfg = conv.openclip_config(config)
    v, t = cfg["model_cfg"]["vision_cfg"], cfg["model_cfg"]["text_cfg"]
    assert v["norm_kwargs"] == t["norm_kwargs"] == {"eps": 1e-6}
    assert v["act_kwargs"] == t["act_kwargs"] == {"approximate": "tanh"}
    assert v["head_width"] == 8 and v["image_size"] == 32 and t["heads"] == 4
    assert cfg["preprocess_cfg"] == dict(mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic",
                                         resize_mode="shortest")
    qcfg = conv.openclip_config(tiny_config(activation="quick_gelu"))["model_cfg"]
    assert qcfg["quick_gelu"] and "act_kwargs" not in qcfg["text_cfg"]


def test_wrong_eps_breaks_parity(tmp_path, caplog):
    """The test is sensitive: OpenCLIP's default eps (1e-5) for our 1e-6 model is caught."""
    config = tiny_config(layernorm_eps=1e-6)

    def wrong_eps(m):
        for tower in ("vision_cfg", "text_cfg"):
            m[tower]["norm_kwargs"] = {"eps": 1e-5}

    _, errs = openclip_parity(config, random_params(config), tmp_path / "wrong_eps", caplog,
                              wrong_eps)
    assert max(errs.values()) > 10 * TOL, errs


def test_wrong_gelu_breaks_parity(tmp_path, caplog):
    """Flax's tanh GELU exported as PyTorch's default exact GELU (no act_kwargs) is caught."""
    config = tiny_config(activation="gelu_tanh")

    def drop_act(m):
        for tower in ("vision_cfg", "text_cfg"):
            m[tower].pop("act_kwargs")

    _, errs = openclip_parity(config, random_params(config), tmp_path / "wrong_gelu", caplog,
                              drop_act)
    assert max(errs.values()) > 10 * TOL, errs


@pytest.mark.parametrize("model, key", [
    ({"text.pool_type": "mean"}, "model.text.pool_type='mean'"),
    ({"text.vocab_size": 1000}, "model.text.vocab_size=1000"),
    ({"text.mlp_ratio": 4.1}, "model.text.mlp_ratio=4.1"),
    ({"text.tokenizer": "clips_wordpiece"}, "model.text.tokenizer='clips_wordpiece'"),
    # QuickGELU image + GELU text: quick_gelu would set both native towers, timm has no QuickGELU
    ({"image.activation": "quick_gelu"}, "model.image.activation='quick_gelu'"),
    # GELU image + QuickGELU text needs the timm tower: tanh GELU, eps, ln_pre, size refused
    ({"text.activation": "quick_gelu", "image.activation": "gelu_tanh"},
     "model.image.activation='gelu_tanh'"),
    ({"text.activation": "quick_gelu", "image.ln_pre": False, "layernorm_eps": 1e-5},
     "model.layernorm_eps=1e-05"),
    ({"text.activation": "quick_gelu"}, "model.image.ln_pre=True"),
    ({"text.activation": "quick_gelu", "image.ln_pre": False}, "no timm ViT"),
])
def test_openclip_refuses_inexpressible(model, key, tmp_path):
    config = tiny_config(**model)
    with pytest.raises(conv.ExportError, match=key.replace(".", r"\.")):
        conv.export_openclip(config, random_params(config), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything


# --- a real trained workdir, through load_params and the CLI --------------------------------

def make_trained_workdir(path, **model):
    from synthclip_jax.train import loop
    c = tiny_config(**model)
    c.total_steps, c.batch_size, c.lr, c.warmup_steps = 3, 8, 1e-3, 1
    c.data.source, c.data.num_workers = "synthetic_shapes", 0
    c.checkpoint.every_steps, c.log.every_steps = 0, 1
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(c.to_json_best_effort(indent=2) + "\n")
    loop.train(c, path, devices=jax.devices()[:1])
    return path


_TRAINED = []  # shared with test_export_hf (which imports this fixture): train once a session


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    if not _TRAINED:
        _TRAINED.append(make_trained_workdir(tmp_path_factory.mktemp("trained")))
    return _TRAINED[0]


def test_load_params_matches_trained_state(trained_workdir):
    config, params, step = load_params(trained_workdir)
    assert step == 3 == config.total_steps
    init = nnx.to_pure_dict(nnx.state(build_model(config, config.seed)))
    shapes = jax.tree.map(np.shape, init)
    assert jax.tree.map(np.shape, params) == shapes
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(init))]
    assert any(moved)  # it is the trained state, not the init
    with pytest.raises(ValueError, match="no checkpoint for step 7"):
        load_params(trained_workdir, step=7)


def test_trained_model_cli_parity(trained_workdir, tmp_path, caplog):
    out = tmp_path / "trained_cli"
    assert cli.main(["--workdir", str(trained_workdir), "--out", str(out)]) == 0
    config, params, _ = load_params(trained_workdir)
    model, _, tokenizer = load_openclip(out, caplog)
    images, tokens = inputs(config)
    errs = rel_errors(jax_forward(config, params, images, tokens),
                      torch_forward(model, images, tokens))
    print("\ntrained: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


def test_cli_help_and_refusal(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "tools.convert_to_openclip", "--help"],
                       capture_output=True, text=True, check=True)
    assert "--workdir" in r.stdout and "--format" in r.stdout
    # A config OpenCLIP cannot express: clear message naming key and value, exit 2, no output.
    work = tmp_path / "w"
    (work / "checkpoints").mkdir(parents=True)
    (work / "config.json").write_text(tiny_config(**{"text.pool_type": "mean"}).to_json())
    assert cli.main(["--workdir", str(work), "--out", str(tmp_path / "out")]) == 2
    assert "model.text.pool_type='mean'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_reads_the_newest_when_a_live_run_deletes_the_checkpoint(
        trained_workdir, tmp_path, monkeypatch, caplog):
    """keep=1: the run saves step 4 and deletes step 3 while the exporter is reading step 3."""
    import shutil

    import orbax.checkpoint as ocp
    workdir = tmp_path / "live"
    shutil.copytree(trained_workdir, workdir)
    real_restore = ocp.CheckpointManager.restore
    deletions = []

    def run_saves_and_deletes(self, step, *args, **kwargs):
        if not deletions:  # once: the live run moves on under the reader
            ckpts = workdir / "checkpoints"
            shutil.copytree(ckpts / str(step), ckpts / str(step + 1))
            shutil.rmtree(ckpts / str(step))
            deletions.append(step)
        return real_restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", run_saves_and_deletes)
    _, params, step = load_params(workdir)
    assert deletions == [3] and step == 4
    _, expected, _ = load_params(trained_workdir)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(expected)))
    assert "was deleted while it was read" in caplog.text

    deletions.clear()
    with pytest.raises(FileNotFoundError, match="checkpoint 4 .* was deleted while it was read"):
        load_params(workdir, step=4)
