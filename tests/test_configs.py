"""Every shipped config loads and builds; sizes agree with OpenCLIP's parameter counts."""
import importlib.util
import math
from pathlib import Path

import jax
import pytest
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.models.two_tower import build_model

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.name != "__init__.py")


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def num_params(config):
    shapes = nnx.state(nnx.eval_shape(lambda: build_model(config, 0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_and_places(path):
    config = load(path)
    assert config.loss.name in ("softmax", "sigmoid", "sigmoid_ring")
    if config.loss.name != "softmax":
        assert config.model.logit_bias_init is not None
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    sharding.check_batch_size(config.batch_size, mesh, config.train.grad_accum_steps)
    abstract = nnx.split(nnx.eval_shape(lambda: build_model(config, 0)))[1]
    sharding.param_shardings(abstract, mesh, config.mesh.rules)


def test_vitb16_matches_openclip_parameter_count():
    # open_clip.create_model('ViT-B-16') has 149,620,737 parameters (incl. logit_scale).
    config = load(Path(__file__).parents[1] / "configs" / "vitb16_synthci30m.py")
    # SynthCLIP's timm image tower: no ln_pre (-2 x 768), a patch-embedding bias (+768)
    assert num_params(config) == 149_620_737 - 768
    config.model.image.update(ln_pre=True, patch_bias=False)  # OpenCLIP's native ViT-B-16
    assert num_params(config) == 149_620_737
    config.model.image.patch_size = 32  # ViT-B-32: 151,277,313
    assert num_params(config) == 151_277_313


def test_simpleclip_r50_image_tower_is_torchvision_resnet50():
    import torchvision

    config = load(Path(__file__).parents[1] / "configs" / "simpleclip_r50.py")
    model = nnx.eval_shape(lambda: build_model(config, 0))
    count = lambda kind: sum(math.prod(x.shape) for x in jax.tree.leaves(
        nnx.state(model.visual, kind)))
    proj = math.prod(model.visual.proj.shape)  # (2048, 2048): simple-clip's first head Linear
    reference = torchvision.models.resnet50()
    trunk = sum(p.numel() for name, p in reference.named_parameters() if not name.startswith("fc."))
    stats = sum(b.numel() for name, b in reference.named_buffers() if "running_" in name)
    assert count(nnx.Param) - proj == trunk == 23_508_032
    assert count(nnx.BatchStat) == stats
    assert proj == 2048 * 2048 and model.visual_head.kernel.shape == (2048, 256)
