"""The CPU-sized seed configs (a fixed interface) train on `--config.data.train` shards."""
import json
import math

import jax
import pytest

from synthclip_jax.config import check as config_check
from synthclip_jax.train import loop
from tests.test_configs import CONFIGS, load
from tests.test_pipeline import write_dataset

SEED_CPU = ("clips_cpu", "simclip_cpu", "simpleclip_cpu", "simpleclip_r50")


@pytest.mark.slow
@pytest.mark.parametrize("name", SEED_CPU)
def test_seed_cpu_config_trains_on_shards(name, tmp_path):
    (path,) = [p for p in CONFIGS if p.stem == name]
    c = load(path)
    c.data.train = write_dataset(tmp_path, n=48)
    c.data.procedural.num_train = 0
    c.total_steps, c.batch_size, c.warmup_steps = 2, 8, 1
    c.data.num_workers = 0
    if name == "simpleclip_r50":  # the full recipe's model at a CPU-sized image
        c.data.image_size = 64
    c.eval.every_steps, c.checkpoint.every_steps, c.log.every_steps = 0, 0, 1
    if c.data.clusters.enabled:
        c.data.clusters.update(proportion=0.5, warmup_epochs=())  # clusters in every batch
    config_check.validate(c, training=True)
    workdir = tmp_path / "run"
    workdir.mkdir()
    loop.train(c, workdir, devices=jax.devices()[:1])
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    if name == "clips_cpu":  # the fixed metric keys of the CLIPS captioner
        assert all(math.isfinite(r["caption_loss"]) and math.isfinite(r["contrastive_loss"])
                   for r in rows)
