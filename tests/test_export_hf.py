"""JAX -> transformers CLIPModel export: get_image_features / get_text_features match ours."""
import logging
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export parity tests run the PyTorch model")
transformers = pytest.importorskip("transformers", reason="--format hf targets transformers")

from synthclip_jax.train.checkpoint import load_params  # noqa: E402
from synthclip_jax.data.tokenizer import EOT_ID, tokenize  # noqa: E402
from tests.test_convert_openclip import (TEXTS, TOL, inputs, jax_forward,  # noqa: E402
                                         random_params, rel_errors, tiny_config,
                                         trained_workdir)  # noqa: F401
from synthclip_jax.export import hf as export_hf  # noqa: E402
from synthclip_jax.export.openclip import ExportError  # noqa: E402
from tools import convert_to_openclip as cli  # noqa: E402


def _tensor(out):
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected
    # features; 4.x returns the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def hf_forward(out_dir, images_nhwc, tokens, caplog):
    torch.set_default_dtype(torch.float32)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = transformers.CLIPModel.from_pretrained(out_dir).eval()
    assert not caught, [str(w.message) for w in caught]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    with torch.no_grad():
        img = _tensor(model.get_image_features(
            pixel_values=torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())))
        txt = _tensor(model.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64))))
        img = torch.nn.functional.normalize(img, dim=-1)
        txt = torch.nn.functional.normalize(txt, dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
    return img.numpy(), txt.numpy(), logits.numpy()


def hf_parity(config, params, out_dir, caplog, patch=None):
    export_hf.export_hf(config, params, out_dir)
    assert (out_dir / "model.safetensors").exists() and (out_dir / "config.json").exists()
    assert not list(out_dir.glob("*.bin"))  # no pickle
    if patch:
        cfg = transformers.CLIPConfig.from_pretrained(out_dir)
        patch(cfg)
        cfg.save_pretrained(out_dir)
    images, tokens = inputs(config)
    errs = rel_errors(jax_forward(config, params, images, tokens),
                      hf_forward(out_dir, images, tokens, caplog))
    print(f"\nhf {out_dir.name}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    return errs


@pytest.mark.parametrize("case, model", [
    ("gelu", {}), ("gelu_tanh", {"activation": "gelu_tanh"}),
    ("quick_gelu", {"activation": "quick_gelu"}), ("eps_1e-5", {"layernorm_eps": 1e-5}),
])
def test_hf_parity(case, model, tmp_path, caplog):
    config = tiny_config(**model)
    errs = hf_parity(config, random_params(config), tmp_path / case, caplog)
    assert max(errs.values()) <= TOL, errs


def test_hf_wrong_eps_and_gelu_break_parity(tmp_path, caplog):
    config = tiny_config(activation="gelu_tanh", layernorm_eps=1e-6)
    params = random_params(config)

    def eps(cfg):
        cfg.text_config.layer_norm_eps = cfg.vision_config.layer_norm_eps = 1e-5

    def act(cfg):
        cfg.text_config.hidden_act = cfg.vision_config.hidden_act = "gelu"

    for name, patch in (("wrong_eps", eps), ("wrong_gelu", act)):
        errs = hf_parity(config, params, tmp_path / name, caplog, patch)
        assert max(errs.values()) > 10 * TOL, (name, errs)


def test_hf_trained_model_cli(trained_workdir, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "hf_trained"
    assert cli.main(["--workdir", str(trained_workdir), "--out", str(out), "--format", "hf"]) == 0
    config, params, _ = load_params(trained_workdir)
    images, tokens = inputs(config)
    errs = rel_errors(jax_forward(config, params, images, tokens),
                      hf_forward(out, images, tokens, caplog))
    print("\nhf trained: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs

    # The exported processor: HF's tokenizer gives our ids (it pads with EOT, we with 0) and,
    # through CLIPModel, our text features; the image settings are the config's.
    processor = transformers.CLIPProcessor.from_pretrained(out)
    context = config.model.text.context_length
    texts = TEXTS + ["A dog's toy, on the grass!", "3 red balls & 2 cubes (left)"]
    hf_ids = processor(text=texts, padding="max_length", max_length=context, truncation=True,
                       return_tensors="np")["input_ids"]
    ours = tokenize(texts, context)
    for text, hf_row, our_row in zip(texts, hf_ids, ours):
        end = int(np.argmax(our_row == EOT_ID)) + 1
        if len(text.split()) < context - 2:  # untruncated: HF does not force a final EOT
            np.testing.assert_array_equal(hf_row[:end], our_row[:end], err_msg=text)
            assert (hf_row[end:] == EOT_ID).all()
    short = [i for i, t in enumerate(texts) if len(t.split()) < context - 2]
    model = transformers.CLIPModel.from_pretrained(out).eval()
    with torch.no_grad():
        hf_txt = _tensor(model.get_text_features(input_ids=torch.from_numpy(
            hf_ids[short].astype(np.int64))))
        hf_txt = torch.nn.functional.normalize(hf_txt, dim=-1).numpy()
    our_txt = jax_forward(config, params, images, ours[short])[1]
    np.testing.assert_allclose(hf_txt, our_txt, atol=1e-4)
    image_processor = processor.image_processor
    assert image_processor.crop_size == {"height": config.data.image_size,
                                         "width": config.data.image_size}
    np.testing.assert_allclose(image_processor.image_mean, config.data.mean)
    np.testing.assert_allclose(image_processor.image_std, config.data.std)


@pytest.mark.parametrize("model, key", [
    ({"image.pool_type": "avg"}, "model.image.pool_type='avg'"),
    ({"image.ln_pre": False}, "model.image.ln_pre=False"),
    ({"text.causal": False}, "model.text.causal=False"),
    ({"text.pool_type": "last"}, "model.text.pool_type='last'"),
    ({"logit_bias_init": -10.0, "logit_scale_init": math.log(10.0)}, "model.logit_bias_init=-10.0"),
    ({"text.pool_type": "mean"}, "model.text.pool_type='mean'"),
])
def test_hf_refuses_inexpressible(model, key, tmp_path):
    config = tiny_config(**model)
    with pytest.raises(ExportError, match=key.replace(".", r"\.")):
        export_hf.export_hf(config, random_params(config), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_cli_refuses_before_reading_checkpoints(tmp_path, capsys):
    work = tmp_path / "w"
    (work / "checkpoints").mkdir(parents=True)
    (work / "config.json").write_text(tiny_config(**{"image.pool_type": "avg"}).to_json())
    out = tmp_path / "out"
    assert cli.main(["--workdir", str(work), "--out", str(out), "--format", "hf"]) == 2
    assert "model.image.pool_type='avg'" in capsys.readouterr().err
    assert not out.exists()
