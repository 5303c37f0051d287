"""The Scaling-laws seed's checkpoints in: a timm ViT classifier state dict (`--format timm
--timm-model NAME`) and a raw open_clip QuickGELU state dict (`--format openclip --config
configs/scaling_clip_vitb16.py`). References are the timm / open_clip models themselves.

timm's own tiny `test_vit` (width 64, 6 blocks, 2 heads, 160 px, 1000 classes) stands in for
`vit_base_patch16_224`: the same VisionTransformer class and key layout, at test speed.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the references are PyTorch models")
timm = pytest.importorskip("timm", reason="timm's ViT classifier is the import source")
open_clip = pytest.importorskip("open_clip", reason="open_clip is the CLIP import source")

from configs import scaling_clip_vitb16  # noqa: E402
from synthclip_jax.export import import_weights as imp  # noqa: E402
from synthclip_jax.export import load_openclip  # noqa: E402
from synthclip_jax.train.checkpoint import load_params  # noqa: E402
from tests.test_import_weights import (features_match, openclip_cfg, openclip_model,  # noqa: E402
                                       randomize, run_cli)
from tests.test_convert_openclip import torch_forward  # noqa: E402


def classifier_logits(workdir, images_nhwc):
    from flax import nnx
    from synthclip_jax.models.two_tower import build_model
    config, params, _ = load_params(workdir)
    graphdef, state = nnx.split(build_model(config, 0))
    nnx.replace_by_pure_dict(state, params)
    return config, np.asarray(nnx.merge(graphdef, state).logits(images_nhwc))


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(timm.create_model("test_vit", pretrained=False), seed=1)
    path = tmp_path_factory.mktemp("timm") / "vit.pt"
    torch.save(model.state_dict(), path)  # the seed's raw state dict file
    return model, path


def test_timm_vit_classifier_parity(timm_vit, tmp_path):
    model, path = timm_vit
    assert run_cli("--format", "timm", "--src", path, "--timm-model", "test_vit",
                   "--out", tmp_path / "w") == 0
    images = np.random.default_rng(2).standard_normal((2, 160, 160, 3)).astype(np.float32)
    config, ours = classifier_logits(tmp_path / "w", images)
    with torch.no_grad():
        theirs = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert ours.shape == theirs.shape == (2, 1000)
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert err <= 1e-5, err
    assert config.train.task == "classify" and tuple(config.data.mean) == (0.5, 0.5, 0.5)
    assert (config.model.layernorm_eps, config.model.image.pool_type) == (1e-6, "tok")


def test_timm_vit_is_strict(timm_vit, tmp_path, capsys):
    model, path = timm_vit
    assert run_cli("--format", "timm", "--src", path, "--out", tmp_path / "a") == 2
    assert "--timm-model" in capsys.readouterr().err
    state = dict(model.state_dict(), **{"fc_norm.weight": torch.ones(64)})
    torch.save(state, tmp_path / "extra.pt")
    assert run_cli("--format", "timm", "--src", tmp_path / "extra.pt", "--timm-model",
                   "test_vit", "--out", tmp_path / "b") == 2
    assert "fc_norm.weight" in capsys.readouterr().err
    state = {k: v for k, v in model.state_dict().items() if k != "head.bias"}
    torch.save(state, tmp_path / "headless.pt")
    assert run_cli("--format", "timm", "--src", tmp_path / "headless.pt", "--timm-model",
                   "test_vit", "--out", tmp_path / "c") == 2
    assert "head.bias" in capsys.readouterr().err


def test_openclip_quickgelu_raw_state_dict(tmp_path):
    """The seed's CLIP files: torch.save(model.state_dict()) of a force_quick_gelu open_clip
    model (LayerNorm eps 1e-5); the seed config at tiny size describes it."""
    cfg = openclip_cfg(**{"quick_gelu": True, "vision_cfg.norm_kwargs": None,
                          "text_cfg.norm_kwargs": None})
    model = openclip_model(cfg, seed=7)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    c = scaling_clip_vitb16.get_config()
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    c.model.embed_dim = cfg["embed_dim"]
    c.model.image.update(width=v["width"], depth=v["layers"], heads=v["width"] // v["head_width"],
                         patch_size=v["patch_size"])
    c.model.text.update(width=t["width"], depth=t["layers"], heads=t["heads"],
                        context_length=t["context_length"])
    c.data.image_size = v["image_size"]
    (tmp_path / "config.json").write_text(c.to_json_best_effort())
    assert run_cli("--format", "openclip", "--src", tmp_path / "ckpt.pt", "--config",
                   tmp_path / "config.json", "--out", tmp_path / "w") == 0
    features_match(tmp_path / "w", lambda i, t: torch_forward(model, i, t))


def test_scaling_clip_config_is_openclip_vitb16_quickgelu():
    """configs/scaling_clip_vitb16.py describes open_clip's own ViT-B-16 with QuickGELU."""
    from synthclip_jax.config.base import base
    cfg = dict(open_clip.get_model_config("ViT-B-16"), quick_gelu=True)
    theirs = load_openclip.model_config({"model_cfg": cfg}, base())
    imp.check_agrees(theirs, scaling_clip_vitb16.get_config(), "ViT-B-16-quickgelu", False)
    assert json.loads(json.dumps(cfg))["vision_cfg"]["width"] == 768


# --- classifier evaluation with the seed's preprocessing ----------------------------------

def write_image_folder(root, sizes, seed=0):
    """Class sub-folders of JPEGs of various shapes (portrait, landscape, small)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
        paths.append(folder / f"{i}.jpg")
    return paths


def test_seed_preprocessing_equals_torchvision(tmp_path):
    """Resize 256 + CenterCrop 224 + Normalize(0.5, 0.5) as the seed's torchvision pipeline."""
    from PIL import Image
    from torchvision import transforms
    from synthclip_jax.evaluate.classify import SeedPreprocess
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                    transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ours = SeedPreprocess(224, (0.5,) * 3, (0.5,) * 3)
    for path in write_image_folder(tmp_path, [(300, 260), (257, 400), (640, 480), (256, 256)]):
        theirs = reference(Image.open(path).convert("RGB")).numpy().transpose(1, 2, 0)
        mine = ours.decode(path.read_bytes(), str(path))
        assert mine.shape == theirs.shape == (224, 224, 3)
        assert np.abs(mine - theirs).max() <= 1e-6, path


def test_classify_eval_matches_timm(timm_vit, tmp_path):
    """`python -m synthclip_jax.evaluate --classify` on an imported timm classifier: top-1,
    top-5 and cross-entropy of timm's own logits on the seed's preprocessing."""
    from PIL import Image
    from torchvision import transforms
    from synthclip_jax.evaluate import __main__ as evaluate_cli
    model, path = timm_vit
    assert run_cli("--format", "timm", "--src", path, "--timm-model", "test_vit",
                   "--out", tmp_path / "w") == 0
    paths = write_image_folder(tmp_path / "val", [(200, 190), (183, 250), (240, 200)] * 2)
    out = tmp_path / "results.json"
    assert evaluate_cli.main(["--workdir", str(tmp_path / "w"), "--classify",
                              f"toy={tmp_path / 'val'}", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    # the reference: timm on torchvision's transform at 160 px (resize round(160 / 0.875) = 183)
    reference = transforms.Compose([transforms.Resize(183), transforms.CenterCrop(160),
                                    transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    order = sorted(paths, key=lambda p: (p.parent.name, p.name))
    x = torch.stack([reference(Image.open(p).convert("RGB")) for p in order])
    labels = torch.tensor([int(p.parent.name[-1]) for p in order])
    with torch.no_grad():
        logits = model(x)
    top5 = logits.topk(5, dim=1).indices
    assert got["classify/toy/top1"] == pytest.approx(
        (logits.argmax(1) == labels).float().mean().item())
    assert got["classify/toy/top5"] == pytest.approx(
        (top5 == labels[:, None]).any(1).float().mean().item())
    assert got["classify/toy/ce"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)


def test_init_from_checks_the_task(timm_vit, tmp_path):
    """Fine-tuning the imported classifier needs train.task=classify; the refusal names it."""
    from synthclip_jax.config.base import base
    from synthclip_jax.config.error import ConfigError
    from synthclip_jax.train import init_from
    _, path = timm_vit
    assert run_cli("--format", "timm", "--src", path, "--timm-model", "test_vit",
                   "--out", tmp_path / "w") == 0
    config = base()
    config.init_from = str(tmp_path / "w")
    with pytest.raises(ConfigError, match="train.task=classify"):
        init_from.load_params(config, target=None)
