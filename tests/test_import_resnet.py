"""ImageNet ResNet trunks in (`tools.import_weights --format torchvision|timm`): a random-weight
torchvision and timm ResNet-18, saved as their users save them, imported into a CLIP model with
a ResNet image tower. The reference is the PyTorch model itself: its pooled features (eval mode,
running statistics) times our projection equal our image tower's output; everything else keeps
the config's seeded init; the classifier is dropped and said so."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="the sources are PyTorch models")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402

from configs import demo_cpu  # noqa: E402
from synthclip_jax.export import import_weights as imp  # noqa: E402
from synthclip_jax.export.torch_files import WeightsError  # noqa: E402
from synthclip_jax.models.two_tower import build_model  # noqa: E402
from synthclip_jax.train.checkpoint import load_params  # noqa: E402
from tools import import_weights as cli  # noqa: E402

SIZE = 64


def resnet_config(depth=18, width=64):
    config = demo_cpu.get_config()
    config.data.image_size = SIZE
    config.model.image.update(tower="resnet", resnet_depth=depth, resnet_width=width)
    return config


def pretrained_like(lib: str, depth=18, seed=0):
    """A library's resnet{depth} with a 10-class classifier, random BatchNorm affine parameters
    and running statistics from a calibration batch (so that eval mode normalises with values
    that are not 0/1), in eval mode."""
    torch.manual_seed(seed)
    model = (getattr(torchvision.models, f"resnet{depth}")(num_classes=10) if lib == "torchvision"
             else timm.create_model(f"resnet{depth}", pretrained=False, num_classes=10))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.add_(0.2 * torch.randn(bn.num_features))
            bn.bias.add_(0.2 * torch.randn(bn.num_features))
            bn.momentum = 1.0
        model.train()(torch.randn(4, 3, SIZE, SIZE))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def save(model, lib, tmp_path):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if lib == "torchvision":  # torch.save(model.state_dict()), as torchvision users do
        path = tmp_path / "resnet.pth"
        torch.save(state, path)
    else:  # timm's hub files are model.safetensors
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    return path


def write_config(config, tmp_path):
    path = tmp_path / "model.json"
    path.write_text(config.to_json_best_effort())
    return path


def pooled_features(model, images):
    """The torch model's globally pooled features (its classifier's input)."""
    trunk = copy.deepcopy(model)
    trunk.fc = torch.nn.Identity()  # both libraries: pool -> fc
    with torch.no_grad():
        return trunk(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def image_tower(config, params, images):
    graphdef, state = nnx.split(build_model(config, 0))
    nnx.replace_by_pure_dict(state, params)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s).visual(x))(state,
                                                                                jnp.asarray(images)))


@pytest.mark.parametrize("lib", ["torchvision", "timm"])
def test_pretrained_trunk_imports_exactly(lib, tmp_path, capsys):
    model = pretrained_like(lib)
    config = resnet_config()
    src = save(model, lib, tmp_path)
    assert cli.main(["--format", lib, "--src", str(src), "--config",
                     str(write_config(config, tmp_path)), "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "note: dropped the ImageNet classifier ['fc.bias', 'fc.weight'] (10 classes)" in out
    assert "image ResNet-18 at 64px" in out

    loaded, params, step = load_params(tmp_path / "w")
    assert step == 0 and loaded.model.image.tower == "resnet"
    images = np.random.default_rng(1).standard_normal((3, SIZE, SIZE, 3)).astype(np.float32)
    expected = pooled_features(model, images) @ np.asarray(params["visual"]["proj"])
    np.testing.assert_allclose(image_tower(loaded, params, images), expected, atol=1e-5,
                               rtol=1e-5)
    # the running statistics came across (not the seeded 0/1)
    np.testing.assert_array_equal(params["visual"]["layer4"][1]["bn2"]["var"],
                                  model.layer4[1].bn2.running_var.numpy())
    # everything past the trunk is the config's seeded init
    seeded = imp.seeded_params(config)
    for path in ("visual/proj", "text/token_embedding", "logit_scale"):
        node = params
        for part in path.split("/"):
            node = node[part]
        np.testing.assert_array_equal(node, seeded[path], err_msg=path)


def test_init_from_takes_the_file_directly(tmp_path):
    from synthclip_jax.train import init_from
    model = pretrained_like("torchvision")
    src = save(model, "torchvision", tmp_path)
    assert imp.detect_format(src) == "torchvision"
    config = resnet_config()
    config.init_from = str(src)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          imp.abstract_params(config))
    params = init_from.load_params(config, target)
    np.testing.assert_array_equal(np.asarray(params["visual"]["conv1"]["kernel"]),
                                  model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))


def test_refusals_name_the_key(tmp_path, capsys):
    src = save(pretrained_like("torchvision", depth=34), "torchvision", tmp_path)
    for config, match in (
            (resnet_config(18), r"the source is a ResNet-34 .* set model\.image\.resnet_depth=34"),
            (resnet_config(34, width=32), r"conv1\.weight has 64 output channels, .* set "
                                          r"model\.image\.resnet_width=64"),
            (demo_cpu.get_config(), r"needs model\.image\.tower='resnet'"),
            (None, r"carries no CLIP config")):
        with pytest.raises(WeightsError, match=match):
            imp.import_weights("torchvision", src, config)
    # the CLI: status 2 and one line
    assert cli.main(["--format", "timm", "--src", str(src), "--config",
                     str(write_config(resnet_config(50), tmp_path)), "--out",
                     str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "set model.image.resnet_depth=34" in err
    # a tensor no ResNet has: refused unless skipped
    state = pretrained_like("torchvision").state_dict()
    state["layer4.1.se.fc.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"1 tensors our ResNet has no place for.*se\.fc"):
        imp.import_weights("torchvision", tmp_path / "extra.pth", resnet_config())
    imp.import_weights("torchvision", tmp_path / "extra.pth", resnet_config(),
                       skip_keys=["*.se.*"])
