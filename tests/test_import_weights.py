"""PyTorch -> JAX import: real open_clip / transformers models with random weights, saved as their
libraries save them, imported with tools.import_weights; our features equal theirs.

References are the PyTorch models themselves (their encode_image/encode_text, get_*_features,
and open_clip's ClipLoss / resize_pos_embed), never our own output captured once.
"""
import argparse
import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the import tests build the PyTorch models")
open_clip = pytest.importorskip("open_clip", reason="OpenCLIP is an import source")
transformers = pytest.importorskip("transformers", reason="CLIPModel is an import source")

from safetensors.torch import save_file  # noqa: E402

from synthclip_jax.export import import_weights as imp  # noqa: E402
from synthclip_jax.export.openclip import openclip_state_dict  # noqa: E402
from synthclip_jax.export.torch_files import WeightsError  # noqa: E402
from synthclip_jax.train.checkpoint import load_params  # noqa: E402
from tests.test_convert_openclip import (TOL, inputs, jax_forward, rel_errors,  # noqa: E402
                                         torch_forward)
from tools import import_weights as cli  # noqa: E402

SIZE, PATCH, CONTEXT = 32, 8, 16


def openclip_cfg(**over):
    vision = dict(image_size=SIZE, layers=2, width=32, head_width=8, patch_size=PATCH,
                  norm_kwargs={"eps": 1e-6})
    text = dict(context_length=CONTEXT, vocab_size=49408, width=32, heads=4, layers=2,
                norm_kwargs={"eps": 1e-6})
    cfg = dict(embed_dim=16, vision_cfg=vision, text_cfg=text)
    for key, value in over.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


def randomize(model, seed=0):
    """Every tensor perturbed (LayerNorms are 1/0 and biases 0 at init), so a swapped or
    skipped tensor shows in the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def openclip_model(cfg, seed=0):
    torch.manual_seed(seed)
    return randomize(open_clip.CLIP(**cfg), seed)


def save_local_dir(model, cfg, out, preprocess=None):
    out.mkdir(parents=True, exist_ok=True)
    pre = preprocess or dict(mean=[0.5, 0.4, 0.3], std=[0.2, 0.3, 0.25])
    (out / "open_clip_config.json").write_text(json.dumps(dict(model_cfg=cfg,
                                                               preprocess_cfg=pre)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
    return out


def run_cli(*args):
    return cli.main([str(a) for a in args])


def features_match(workdir, torch_fn, tol=TOL):
    config, params, step = load_params(workdir)
    assert step == 0
    images, tokens = inputs(config)
    errs = rel_errors(jax_forward(config, params, images, tokens), torch_fn(images, tokens))
    print("\n" + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= tol, errs
    return config, params


# --- OpenCLIP -----------------------------------------------------------------------------

@pytest.mark.parametrize("case, over", [
    ("default", {}),
    ("quick_gelu_eps1e-5", {"quick_gelu": True, "vision_cfg.norm_kwargs": None,
                            "text_cfg.norm_kwargs": None}),
    ("tanh_avg_noln_bidir_last", {"vision_cfg.act_kwargs": {"approximate": "tanh"},
                                  "text_cfg.act_kwargs": {"approximate": "tanh"},
                                  "vision_cfg.pool_type": "avg", "vision_cfg.no_ln_pre": True,
                                  "text_cfg.no_causal_mask": True, "text_cfg.pool_type": "last"}),
    ("siglip_bias", {"init_logit_bias": -10.0}),
])
def test_openclip_local_dir_parity(case, over, tmp_path):
    cfg = openclip_cfg(**over)
    model = openclip_model(cfg)
    src = save_local_dir(model, cfg, tmp_path / "src")
    assert run_cli("--format", "openclip", "--src", src, "--out", tmp_path / "w") == 0
    config, _ = features_match(tmp_path / "w", lambda i, t: torch_forward(model, i, t))
    assert tuple(config.data.mean) == (0.5, 0.4, 0.3) and config.data.image_size == SIZE
    assert (config.model.logit_bias_init is not None) == ("init_logit_bias" in over)


def test_state_dict_file_with_config(tmp_path):
    """A bare .bin (torch.save of the state dict) needs --config; with it, parity."""
    cfg = openclip_cfg()
    model = openclip_model(cfg, seed=3)
    torch.save(model.state_dict(), tmp_path / "weights.bin")
    assert run_cli("--format", "openclip", "--src", tmp_path / "weights.bin",
                   "--out", tmp_path / "none") == 2
    # the config: a workdir's config.json written by importing the same architecture
    save_local_dir(openclip_model(cfg, seed=4), cfg, tmp_path / "other")
    assert run_cli("--format", "openclip", "--src", tmp_path / "other", "--out",
                   tmp_path / "other_w") == 0
    assert run_cli("--format", "openclip", "--src", tmp_path / "weights.bin", "--config",
                   tmp_path / "other_w" / "config.json", "--out", tmp_path / "w") == 0
    features_match(tmp_path / "w", lambda i, t: torch_forward(model, i, t))


def test_import_export_import_is_exact(tmp_path):
    from synthclip_jax.export.workdir import export
    cfg = openclip_cfg(quick_gelu=True)
    model = openclip_model(cfg, seed=5)
    save_local_dir(model, cfg, tmp_path / "src")
    assert run_cli("--format", "openclip", "--src", tmp_path / "src", "--out", tmp_path / "a") == 0
    export(tmp_path / "a", tmp_path / "exported")
    assert run_cli("--format", "openclip", "--src", tmp_path / "exported", "--out",
                   tmp_path / "b") == 0
    config_a, params_a, _ = load_params(tmp_path / "a")
    config_b, params_b, _ = load_params(tmp_path / "b")
    assert config_a.model.to_dict() == config_b.model.to_dict()
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(a, b)
    # and our export is OpenCLIP's own state dict, bit for bit
    theirs = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = openclip_state_dict(params_a)
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


# --- transformers CLIPModel ---------------------------------------------------------------

def hf_model(act="quick_gelu", eps=1e-5, seed=0):
    common = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, hidden_act=act, layer_norm_eps=eps)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=CONTEXT, eos_token_id=49407,
                         bos_token_id=49406, pad_token_id=0, **common),
        vision_config=dict(image_size=SIZE, patch_size=PATCH, **common), projection_dim=16)
    torch.manual_seed(seed)
    return randomize(transformers.CLIPModel(config), seed)


def hf_forward(model, images, tokens):
    def tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output
    with torch.no_grad():
        img = tensor(model.get_image_features(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())))
        txt = tensor(model.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64))))
        img, txt = (torch.nn.functional.normalize(x, dim=-1) for x in (img, txt))
        return img.numpy(), txt.numpy(), (model.logit_scale.exp() * img @ txt.T).numpy()


@pytest.mark.parametrize("act, eps", [("quick_gelu", 1e-5), ("gelu", 1e-6),
                                      ("gelu_pytorch_tanh", 1e-5)])
def test_hf_parity(act, eps, tmp_path):
    model = hf_model(act, eps)
    model.save_pretrained(tmp_path / "hf")
    assert run_cli("--format", "hf", "--src", tmp_path / "hf", "--out", tmp_path / "w") == 0
    config, params = features_match(tmp_path / "w", lambda i, t: hf_forward(model, i, t))
    assert config.model.text.heads == 4 and config.model.layernorm_eps == eps


def test_hf_import_export_import_is_exact(tmp_path):
    from synthclip_jax.export.workdir import export
    model = hf_model(seed=2)
    model.save_pretrained(tmp_path / "hf")
    # older transformers saved the int64 position_ids buffers too (openai/clip-vit-base-patch32)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(CONTEXT)[None]
    sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "model.safetensors").unlink()
    assert run_cli("--format", "hf", "--src", tmp_path / "hf", "--out", tmp_path / "a") == 0
    export(tmp_path / "a", tmp_path / "hf_again", fmt="hf")
    assert run_cli("--format", "hf", "--src", tmp_path / "hf_again", "--out", tmp_path / "b") == 0
    _, params_a, _ = load_params(tmp_path / "a")
    _, params_b, _ = load_params(tmp_path / "b")
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(a, b)


# --- what does not fit --------------------------------------------------------------------

def test_wrong_shape_names_key_shapes_and_config_key(tmp_path, capsys):
    cfg = openclip_cfg()
    save_local_dir(openclip_model(cfg), cfg, tmp_path / "src")
    assert run_cli("--format", "openclip", "--src", tmp_path / "src", "--out", tmp_path / "w") == 0
    config = imp.read_config(tmp_path / "w" / "config.json")
    config.data.image_size = 48
    with pytest.raises(WeightsError, match=r"data\.image_size"):
        imp.import_weights("openclip", tmp_path / "src", config)  # the source's config differs
    # a bare state dict: only the tensors can disagree
    torch.save(openclip_model(cfg).state_dict(), tmp_path / "w.pt")
    with pytest.raises(WeightsError) as e:
        imp.import_weights("openclip", tmp_path / "w.pt", config)
    assert ("visual.positional_embedding: the source has shape (17, 32), the config expects "
            "(37, 32); set data.image_size" in str(e.value)) and "--resize-pos-embed" in str(e.value)
    config = imp.read_config(tmp_path / "w" / "config.json")
    config.model.text.vocab_size = 1000
    with pytest.raises(WeightsError, match=r"token_embedding\.weight: the source has shape "
                       r"\(49408, 32\), the config expects \(1000, 32\); set model\.text\."
                       r"vocab_size"):
        imp.import_weights("openclip", tmp_path / "w.pt", config)
    config = imp.read_config(tmp_path / "w" / "config.json")
    config.model.image.depth = 3
    with pytest.raises(WeightsError, match=r"2 blocks, the config model\.image\.depth=3"):
        imp.import_weights("openclip", tmp_path / "w.pt", config)
    # the CLI: one line, exit 2, nothing written
    config_path = tmp_path / "big.json"
    config = imp.read_config(tmp_path / "w" / "config.json")
    config.model.embed_dim = 24
    config_path.write_text(config.to_json())
    assert run_cli("--format", "openclip", "--src", tmp_path / "w.pt", "--config", config_path,
                   "--out", tmp_path / "bad") == 2
    err = capsys.readouterr().err
    assert "the config expects (32, 24); set model.embed_dim" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_missing_and_extra_keys(tmp_path):
    cfg = openclip_cfg()
    model = openclip_model(cfg)
    sd = model.state_dict()
    save_local_dir(model, cfg, tmp_path / "ok")
    run_cli("--format", "openclip", "--src", tmp_path / "ok", "--out", tmp_path / "w")
    config = imp.read_config(tmp_path / "w" / "config.json")
    missing = {k: v for k, v in sd.items() if k != "visual.proj"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"no visual\.proj for our parameter visual/proj.*"
                       r"--init-missing 'visual/proj'"):
        imp.import_weights("openclip", tmp_path / "missing.pt", config)
    _, params = imp.import_weights("openclip", tmp_path / "missing.pt", config,
                                   init_missing=["visual/proj"])
    assert params["visual"]["proj"].shape == (32, 16)
    extra = dict(sd, **{"visual.head.weight": torch.zeros(3, 3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"1 tensors the config has no parameter for, e\.g\. "
                       r"\['visual\.head\.weight'\].*--skip-keys"):
        imp.import_weights("openclip", tmp_path / "extra.pt", config)
    imp.import_weights("openclip", tmp_path / "extra.pt", config, skip_keys=["visual.head.*"])
    # SigLIP fine-tuning of a CLIP: the config wants a logit_bias the source lacks
    config.model.logit_bias_init = -10.0
    with pytest.raises(WeightsError, match="logit_bias"):
        imp.import_weights("openclip", tmp_path / "ok", config)
    _, params = imp.import_weights("openclip", tmp_path / "ok", config, init_missing=["logit_bias"])
    assert float(params["logit_bias"]) == -10.0


def test_hf_wrong_shape_names_hf_key(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["vision_model.encoder.layers.1.mlp.fc1.weight"] = torch.zeros(96, 32)
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"vision_model\.encoder\.layers\.1\.mlp\.fc1\.weight: "
                       r"the source has shape \(96, 32\), the config expects \(128, 32\); set "
                       r"model\.image\.mlp_ratio"):
        imp.import_weights("hf", tmp_path / "hf")


# --- pickles: weights only, plus an allowlist --------------------------------------------

class NotAllowed:
    pass


def test_torch_file_with_disallowed_type_is_refused(tmp_path):
    cfg = openclip_cfg()
    model = openclip_model(cfg)
    config = imp.read_config(save_and_import(model, cfg, tmp_path) / "config.json")
    ok = {"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
          "optimizer": {"state": {}, "param_groups": []}, "args": argparse.Namespace(lr=1e-3)}
    torch.save(ok, tmp_path / "checkpoint.pt")  # as SynthCLIP / OpenCLIP trainers save
    _, params = imp.import_weights("openclip", tmp_path / "checkpoint.pt", config)
    bad = dict(ok, args=argparse.Namespace(thing=NotAllowed()))
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"refusing to unpickle .*NotAllowed"):
        imp.import_weights("openclip", tmp_path / "bad.pt", config)


def save_and_import(model, cfg, tmp_path):
    save_local_dir(model, cfg, tmp_path / "ld")
    assert run_cli("--format", "openclip", "--src", tmp_path / "ld", "--out", tmp_path / "ldw") == 0
    return tmp_path / "ldw"


# --- resizing position embeddings ---------------------------------------------------------

def test_resize_pos_embed_as_openclip(tmp_path):
    cfg = openclip_cfg()
    model = openclip_model(cfg)
    save_local_dir(model, cfg, tmp_path / "src")
    big = openclip_cfg(**{"vision_cfg.image_size": 48, "text_cfg.context_length": 24})
    save_local_dir(openclip_model(big), big, tmp_path / "big")
    run_cli("--format", "openclip", "--src", tmp_path / "big", "--out", tmp_path / "big_w")
    assert run_cli("--format", "openclip", "--src", tmp_path / "src", "--config",
                   tmp_path / "big_w" / "config.json", "--out", tmp_path / "w") == 2
    assert run_cli("--format", "openclip", "--src", tmp_path / "src", "--config",
                   tmp_path / "big_w" / "config.json", "--resize-pos-embed",
                   "--out", tmp_path / "w") == 0
    _, params, _ = load_params(tmp_path / "w")
    # the reference: OpenCLIP's own resize functions into a model of the new size
    target = open_clip.CLIP(**big)
    sd = dict(model.state_dict())
    open_clip.model.resize_pos_embed(sd, target)
    open_clip.model.resize_text_pos_embed(sd, target)
    np.testing.assert_allclose(params["visual"]["positional_embedding"],
                               sd["visual.positional_embedding"].numpy(), atol=1e-6)
    np.testing.assert_allclose(params["text"]["positional_embedding"],
                               sd["positional_embedding"].numpy(), atol=1e-6)
    assert params["visual"]["positional_embedding"].shape == (37, 32)


def test_cli_help():
    r = subprocess.run([sys.executable, "-m", "tools.import_weights", "--help"],
                       capture_output=True, text=True, check=True)
    for flag in ("--format", "--src", "--out", "--config", "--resize-pos-embed", "--skip-keys",
                 "--init-missing"):
        assert flag in r.stdout


# --- SynthCLIP: timm ViT + OpenAI text tower, saved as its trainer saves -----------------

def synthclip_checkpoint(path, seed=0):
    """A CLIP_VITB16-layout model at small size (64-wide heads, as the released ones), saved as
    SynthCLIP's trainer does: DDP's module. prefix, optimizer, scaler and args beside it."""
    import timm
    from tests.test_seed_models import OpenAIText
    torch.manual_seed(seed)
    vit = randomize(timm.models.vision_transformer.VisionTransformer(
        img_size=SIZE, patch_size=PATCH, embed_dim=128, depth=2, num_heads=2, num_classes=0))
    text = randomize(OpenAIText(49408, CONTEXT, 64, 1, 2, 16))
    image_projection = torch.randn(128, 16) * 128**-0.5
    state = {f"visual.{k}": v for k, v in vit.state_dict().items()}
    state.update({k: v for k, v in text.state_dict().items()})
    state.update(image_projection=image_projection, logit_scale=torch.tensor(2.3))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4}]},
                "scaler": {"scale": 65536.0}, "best_acc1": 0.1,
                "args": argparse.Namespace(model="CLIP_VITB16", lr=5e-4, wd=0.5)}, path)

    def forward(images, tokens):
        with torch.no_grad():
            img = vit(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())) @ image_projection
            txt = text(torch.from_numpy(tokens.astype(np.int64)))
            img, txt = (torch.nn.functional.normalize(x, dim=-1) for x in (img, txt))
            return img.numpy(), txt.numpy(), (math.exp(2.3) * img @ txt.T).numpy()
    return forward


def test_synthclip_parity(tmp_path):
    forward = synthclip_checkpoint(tmp_path / "checkpoint.pt")
    assert run_cli("--format", "synthclip", "--src", tmp_path / "checkpoint.pt", "--out",
                   tmp_path / "w") == 0
    config, params = features_match(tmp_path / "w", forward)
    m = config.model
    assert (m.image.layernorm_eps, m.image.activation, m.image.patch_bias, m.image.ln_pre) == (
        1e-6, "gelu", True, False)
    assert (m.layernorm_eps, m.activation, m.image.heads, m.text.heads) == (1e-5, "quick_gelu",
                                                                            2, 1)
    # a heads count shapes cannot show comes from --config (here: what was derived, so the same)
    config, params_again = imp.import_weights("synthclip", tmp_path / "checkpoint.pt", config)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again)):
        np.testing.assert_array_equal(a, b)
    config.model.image.layernorm_eps = 1e-5
    with pytest.raises(WeightsError, match=r"model\.image\.layernorm_eps=1e-06"):
        imp.import_weights("synthclip", tmp_path / "checkpoint.pt", config)


def test_openclip_timm_tower_parity(tmp_path):
    """OpenCLIP with a timm image tower (what our exporter writes for SynthCLIP-like models)."""
    vision = dict(timm_model_name="test_vit", timm_model_pretrained=False, timm_pool="token",
                  timm_proj="linear", timm_proj_bias=False, image_size=160)
    cfg = dict(openclip_cfg(quick_gelu=True), vision_cfg=vision)
    model = openclip_model(cfg, seed=9)
    save_local_dir(model, cfg, tmp_path / "src")
    assert run_cli("--format", "openclip", "--src", tmp_path / "src", "--out", tmp_path / "w") == 0
    config, _ = features_match(tmp_path / "w", lambda i, t: torch_forward(model, i, t))
    assert (config.model.image.activation, config.model.text.heads) == ("gelu", 4)
