"""A ResNet image tower out to OpenCLIP (its timm tower: `timm_model_name='resnet{depth}'`,
average pool, bias-free linear `head.proj`) and back. The reference is open_clip itself: the
exported directory loaded with `create_model_and_transforms('local-dir:...')` (strict, no
warnings) computes our encode_image / encode_text / logits in eval mode (running statistics).
What OpenCLIP cannot express is refused with the key and the reason."""
import json

import numpy as np
import pytest

pytest.importorskip("open_clip", reason="the reference is OpenCLIP")

from synthclip_jax.export import openclip as conv  # noqa: E402
from synthclip_jax.export.fit import _flatten  # noqa: E402
from synthclip_jax.export.hf import check_hf  # noqa: E402
from synthclip_jax.export.import_weights import import_weights  # noqa: E402
from tests.test_convert_openclip import (TOL, openclip_parity, random_params,  # noqa: E402
                                         tiny_config)

RESNET = {"image.tower": "resnet", "image.resnet_depth": 18, "image.resnet_width": 64}


def test_resnet_exports_to_openclip_timm_tower_and_back(tmp_path, caplog):
    config = tiny_config(**RESNET, activation="quick_gelu")
    params = random_params(config)  # BatchNorm statistics perturbed too
    model, errs = openclip_parity(config, params, tmp_path / "out", caplog)
    assert max(errs.values()) <= TOL, errs
    vision = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())[
        "model_cfg"]["vision_cfg"]
    assert (vision["timm_model_name"], vision["timm_pool"], vision["timm_proj"]) == (
        "resnet18", "avg", "linear")
    assert type(model.visual).__name__ == "TimmModel"
    # the running statistics are the model's buffers (eval mode normalises with them)
    np.testing.assert_array_equal(model.visual.trunk.layer4[1].bn2.running_var.numpy(),
                                  params["visual"]["layer4"][1]["bn2"]["var"])

    # and back: OpenCLIP -> ours gives every leaf again, bit for bit
    back_config, back = import_weights("openclip", tmp_path / "out")
    assert (back_config.model.image.tower, back_config.model.image.resnet_depth) == ("resnet", 18)
    ours, theirs = _flatten(params), _flatten(back)
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)


@pytest.mark.parametrize("over, key, reason", [
    ({"projection": "mlp"}, "model.projection", "not Linear-ReLU-Linear without biases"),
    ({"image.resnet_width": 32}, "model.image.resnet_width", "stem width 64"),
])
def test_openclip_refuses_what_its_timm_tower_cannot_compute(over, key, reason):
    with pytest.raises(conv.ExportError, match=rf"{key}=.*{reason}"):
        conv.check_openclip(tiny_config(**{**RESNET, **over}))


def test_hf_refuses_a_resnet():
    with pytest.raises(conv.ExportError, match=r"model\.image\.tower='resnet'.*--format openclip"):
        check_hf(tiny_config(**RESNET))


def test_openclip_timm_resnet_imports(tmp_path):
    """OpenCLIP's own model with a timm ResNet tower (built by open_clip, not by our exporter),
    BatchNorm statistics perturbed, read by `--format openclip`: the same features."""
    import torch
    from tests.test_convert_openclip import torch_forward
    from tests.test_import_weights import (features_match, openclip_cfg, openclip_model,
                                           run_cli, save_local_dir)
    vision = dict(timm_model_name="resnet18", timm_model_pretrained=False, timm_pool="avg",
                  timm_proj="linear", timm_proj_bias=False, image_size=32)
    cfg = dict(openclip_cfg(), vision_cfg=vision)
    model = openclip_model(cfg, seed=3)
    with torch.no_grad():
        for bn in model.visual.trunk.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    save_local_dir(model, cfg, tmp_path / "src")
    assert run_cli("--format", "openclip", "--src", tmp_path / "src", "--out", tmp_path / "w") == 0
    config, _ = features_match(tmp_path / "w", lambda i, t: torch_forward(model, i, t))
    assert (config.model.image.tower, config.model.image.resnet_depth) == ("resnet", 18)
