"""What a workdir written by tools.import_weights is good for: fine-tuning from it
(`init_from`, FSDP over 8 devices; the first loss equals open_clip's ClipLoss on the same
batch), the refusals of a mismatched config, and --mode=eval on it.
"""
import json
import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference models are PyTorch")
open_clip = pytest.importorskip("open_clip", reason="OpenCLIP is the import source")

from synthclip_jax.export import import_weights as imp  # noqa: E402
from tests.test_import_weights import (SIZE, openclip_cfg, openclip_model, run_cli,  # noqa: E402
                                       save_local_dir)


# --- fine-tuning from imported weights: FSDP over 8 devices ------------------------------

def finetune_config(imported):
    config = imp.read_config(imported / "config.json")
    config.total_steps, config.batch_size, config.warmup_steps, config.lr = 1, 16, 0, 1e-4
    config.data.source, config.data.num_workers = "shapes", 0
    config.checkpoint.every_steps, config.log.every_steps = 0, 1
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
    return config


@pytest.mark.slow
def test_finetune_fsdp_first_loss_equals_pytorch(tmp_path):
    from synthclip_jax import sharding
    from synthclip_jax.data.source import make_train_source
    from synthclip_jax.train import init_from, loop
    from synthclip_jax.train.state import make_train_setup
    assert jax.device_count() == 8
    cfg = openclip_cfg(quick_gelu=True)
    model = openclip_model(cfg, seed=7)
    save_local_dir(model, cfg, tmp_path / "src")
    assert run_cli("--format", "openclip", "--src", tmp_path / "src", "--out",
                   tmp_path / "imported") == 0
    config = finetune_config(tmp_path / "imported")

    # PyTorch's loss on the first batch: open_clip's ClipLoss on the same images and tokens
    batch = next(make_train_source(config))
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()),
                                 normalize=True)
        txt = model.encode_text(torch.from_numpy(batch["text"].astype(np.int64)), normalize=True)
        expected = float(open_clip.ClipLoss()(img, txt, model.logit_scale.exp()))

    # placed shard by shard: each device holds 1/8 of an fsdp-sharded weight
    mesh = sharding.make_mesh(config.mesh)
    for source in (tmp_path / "imported", tmp_path / "src"):  # a workdir, an OpenCLIP dir
        config.init_from = str(source)
        setup = make_train_setup(config, mesh)
        params = init_from.load_params(config, setup.abstract_state["params"])
        proj = params["visual"]["proj"]
        assert proj.sharding == setup.abstract_state["params"]["visual"]["proj"].sharding
        assert {s.data.shape for s in proj.addressable_shards} == {(4, 16)}
        np.testing.assert_array_equal(np.asarray(proj), model.visual.proj.detach().numpy())

    # one training step (compiling it is the slow part: once, from the imported workdir)
    config.init_from = str(tmp_path / "imported")
    loop.train(config, tmp_path / "run")
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    print(f"\nfirst loss: ours {first['loss']:.7f} pytorch {expected:.7f}")
    assert math.isclose(first["loss"], expected, rel_tol=1e-5), (first["loss"], expected)


def test_init_from_mismatch_and_imported_workdir_refusals(tmp_path):
    from synthclip_jax.config import resume_check
    from synthclip_jax.config.error import ConfigError
    from synthclip_jax.train import init_from
    from synthclip_jax.train.state import make_train_setup
    from synthclip_jax import sharding
    cfg = openclip_cfg()
    save_local_dir(openclip_model(cfg), cfg, tmp_path / "src")
    run_cli("--format", "openclip", "--src", tmp_path / "src", "--out", tmp_path / "imported")
    config = finetune_config(tmp_path / "imported")
    config.model.image.heads = 8  # shapes fit; the function does not
    config.init_from = str(tmp_path / "imported")
    setup = make_train_setup(config, sharding.make_mesh(config.mesh))
    with pytest.raises(ConfigError, match=r"model\.image\.heads=4, the given config 8; set "
                       r"model\.image\.heads=4") as e:
        init_from.load_params(config, setup.abstract_state["params"])
    assert e.value.key == "init_from"
    # training in the imported workdir itself is refused at the door, with the fix
    with pytest.raises(ConfigError, match=r"--config\.init_from=.*imported --workdir=NEW"):
        resume_check.check(config, tmp_path / "imported")


def test_mode_eval_on_imported_workdir(tmp_path):
    """--mode=eval's path (evaluate_latest) with the workdir's own config.py."""
    from PIL import Image
    from synthclip_jax.evaluate.latest import evaluate_latest
    cfg = openclip_cfg()
    save_local_dir(openclip_model(cfg), cfg, tmp_path / "src")
    run_cli("--format", "openclip", "--src", tmp_path / "src", "--out", tmp_path / "w")
    rng = np.random.default_rng(0)
    for name in ("circle", "square"):
        (tmp_path / "zs" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "zs" / name / f"{i}.png")
    config = imp.read_config(tmp_path / "w" / "config.py")  # what --config=W/config.py loads
    config.eval.zeroshot, config.eval.templates, config.mesh.data = str(tmp_path / "zs"), "simple", 1
    results = evaluate_latest(config, tmp_path / "w", devices=jax.devices()[:1])
    assert 0 <= results["zeroshot/top1"] <= 1
    row = json.loads((tmp_path / "w" / "eval.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 0
