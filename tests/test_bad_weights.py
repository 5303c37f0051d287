"""Weights that lie (issue 29, class 3), through `tools.import_weights` / `convert_to_openclip` /
`synthclip_jax.evaluate` main()s in-process: each case is CLEAR (non-zero exit, one line naming
the file or key and the fix, no traceback) or RIGHT (checked output)."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="the sources are PyTorch weights files")
open_clip = pytest.importorskip("open_clip", reason="OpenCLIP is an import source")

from safetensors.torch import save_file  # noqa: E402

from synthclip_jax.run.files import default_file_mode  # noqa: E402
from tests.test_import_weights import openclip_cfg, openclip_model, save_local_dir  # noqa: E402
from tools import convert_to_openclip, import_weights  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny random OpenCLIP model as a local-dir export (config + safetensors)."""
    cfg = openclip_cfg()
    return save_local_dir(openclip_model(cfg), cfg, tmp_path_factory.mktemp("src") / "model")


def run(capsys, *args):
    """(exit status, stderr) of tools.import_weights; stderr must be one line if it fails."""
    status = import_weights.main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return status, err


def clear(status, err, *names):
    assert status != 0 and err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, (name, err)


def poisoned(source, tmp_path, key, value):
    out = tmp_path / "poisoned"
    shutil.copytree(source, out)
    from safetensors.torch import load_file
    tensors = load_file(str(out / "open_clip_model.safetensors"))
    tensors[key].view(-1)[3] = value
    save_file(tensors, str(out / "open_clip_model.safetensors"))
    return out


@pytest.mark.parametrize("key, value", [("visual.conv1.weight", float("nan")),
                                        ("token_embedding.weight", float("inf"))])
def test_non_finite_weights_are_refused_naming_the_key(source, tmp_path, capsys, key, value):
    status, err = run(capsys, "--format", "openclip", "--src", poisoned(source, tmp_path, key,
                                                                        value),
                      "--out", tmp_path / "w")
    clear(status, err, repr(key), "1 non-finite values", "--allow-nonfinite")
    assert not (tmp_path / "w" / "checkpoints").exists()


def zeroshot_folder(root):
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (20, 20), color).save(root / name / "a.png")
    return root


def test_allowed_non_finite_weights_then_evaluation_refuses_their_features(source, tmp_path,
                                                                            capsys):
    """open_clip gives NaN features for these weights; evaluation used to print a top-1."""
    from synthclip_jax.evaluate.__main__ import main as evaluate
    src = poisoned(source, tmp_path, "visual.conv1.weight", float("nan"))
    assert import_weights.main(["--format", "openclip", "--src", str(src), "--out",
                                str(tmp_path / "w"), "--allow-nonfinite"]) == 0
    capsys.readouterr()
    model = open_clip.create_model_and_transforms(f"local-dir:{src}")[0].eval()
    with torch.no_grad():  # the reference: NaN features
        assert torch.isnan(model.encode_image(torch.zeros(1, 3, 32, 32))).all()
    status = evaluate(["--workdir", str(tmp_path / "w"), "--zeroshot",
                       f"colors={zeroshot_folder(tmp_path / 'zs')}"])
    captured = capsys.readouterr()
    lines = captured.err.replace("\r", "\n").splitlines()  # a progress bar's \r too
    (line,) = [x for x in lines if x.startswith("error:")]
    assert status == 1 and "Traceback" not in captured.err
    assert "image features are not finite" in line and "top1" not in captured.out


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_safetensors_is_named(source, tmp_path, capsys, damage):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    path = src / "open_clip_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncated" else os.urandom(4096))
    status, err = run(capsys, "--format", "openclip", "--src", src, "--out", tmp_path / "w")
    clear(status, err, path, "not a readable .safetensors file", "re-download")


def test_open_clip_config_that_is_not_json_is_named(source, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    text = (src / "open_clip_config.json").read_text()
    (src / "open_clip_config.json").write_text(text[:len(text) // 2])
    status, err = run(capsys, "--format", "openclip", "--src", src, "--out", tmp_path / "w")
    clear(status, err, src / "open_clip_config.json", "is not JSON")


def test_config_json_given_with_config_that_is_not_json_is_named(source, tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"model": {"embed_dim": 16,')
    status, err = run(capsys, "--format", "openclip", "--src", source, "--out", tmp_path / "w",
                      "--config", tmp_path / "c.json")
    clear(status, err, tmp_path / "c.json", "is not JSON")


class Thing:  # a class a plain pickle would import and build
    pass


def test_plain_pickle_with_objects_is_refused_in_words(tmp_path, capsys):
    """torch's weights-only reader names only an opcode here; the message used to read
    'refusing to unpickle Check the documentation of torch.load ...'."""
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps({"state_dict": {"w": Thing()}}))
    status, err = run(capsys, "--format", "openclip", "--src", path, "--out", tmp_path / "w",
                      "--config", "configs/demo_cpu.py")
    clear(status, err, path, "refusing to unpickle tests.test_bad_weights.Thing")
    assert "Check the documentation" not in err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_torch_file_is_named(tmp_path, capsys, damage):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"not a pickle at all")
    status, err = run(capsys, "--format", "openclip", "--src", path, "--out", tmp_path / "w",
                      "--config", "configs/demo_cpu.py")
    clear(status, err, path, "not a readable torch weights file")


def test_exported_safetensors_has_the_mode_of_its_siblings(source, tmp_path, capsys):
    assert import_weights.main(["--format", "openclip", "--src", str(source), "--out",
                                str(tmp_path / "w")]) == 0
    assert convert_to_openclip.main(["--workdir", str(tmp_path / "w"), "--out",
                                     str(tmp_path / "out")]) == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == {"open_clip_config.json": default_file_mode(),
                     "open_clip_model.safetensors": default_file_mode()}
    json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert np.isfinite(open_clip.create_model_and_transforms(
        f"local-dir:{tmp_path / 'out'}")[0].logit_scale.item())
