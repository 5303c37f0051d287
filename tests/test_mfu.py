"""A run you can read: model FLOPs (checked against XLA's count), `mfu` in metrics.jsonl and
the progress line, W&B offline, metric files on object storage written in batches."""
import json
import logging as std_logging

import jax
import pytest

from synthclip_jax import sharding
from synthclip_jax.run import metrics
from synthclip_jax.data.source import make_train_source
from synthclip_jax.model_flops import step_flops
from synthclip_jax.train import loop
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_train_parallel import tiny_train_config


def test_model_flops_match_xla_on_one_layer_towers():
    """XLA's cost analysis of the lowered step (global, before partitioning) counts every op;
    with one layer per tower its scanned loop body is counted once, as it runs. Matmuls are
    most of it at these widths, so the analytic matmul count must come close from below."""
    c = tiny_train_config()
    c.data.image_size = 32
    c.model.embed_dim = 64
    c.model.image.update(width=128, depth=1, heads=2, patch_size=8)
    c.model.text.update(width=128, depth=1, heads=2)
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    setup = make_train_setup(c, mesh)
    step = make_train_step(c, setup, mesh)
    batch = sharding.global_batch(next(make_train_source(c)), mesh)
    xla = step.lower(setup.abstract_state, batch).cost_analysis()["flops"]
    ours = step_flops(c)
    assert 0.75 * xla <= ours <= xla, (ours, xla, ours / xla)


def test_mfu_in_metrics_progress_line_and_wandb(tmp_path, caplog):
    """One short run: `mfu` in every metrics row and the progress line; with wandb installed,
    the same rows in an offline W&B run under the workdir."""
    c = tiny_train_config()
    c.total_steps, c.log.every_steps, c.checkpoint.every_steps = 2, 1, 0
    c.log.peak_tflops = 1e-3  # 1 GFLOP/s per device: the tiny step gives an mfu of order 1
    try:
        import wandb  # noqa: F401
        c.log.wandb.update(project="synthclip-test", mode="offline")
    except ImportError:
        wandb = None
    with caplog.at_level(std_logging.INFO):
        loop.train(c, tmp_path, devices=jax.devices()[:1])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["mfu"] == pytest.approx(step_flops(c) / row["step_sec"] / 1e9, rel=1e-6)
    assert any(" mfu " in r.getMessage() for r in caplog.records)
    if wandb is None:
        return
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    # The offline run file (records for `wandb sync`) holds each logged value as JSON text.
    record = runs[0].read_bytes()
    for row in rows:
        for key in ("loss", "mfu", "step_sec"):
            assert key.encode() in record and json.dumps(row[key]).encode() in record, key


def test_object_storage_metrics_are_buffered(tmp_path, monkeypatch):
    """No append on object storage: rows wait in memory and the file is written whole at most
    every FLUSH_SECONDS and at close, not at every row."""
    writer = metrics.MetricWriter(tmp_path, resume_step=0, tensorboard=False)
    writer.appendable = False  # as for a gs:// workdir
    writes = []  # whole-file writes (files.replace_text: atomic locally, one object on gs://)
    real_replace = metrics.replace_text
    monkeypatch.setattr(metrics, "replace_text",
                        lambda path, text: (writes.append(text), real_replace(path, text)))
    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 3600.0)
    for step in range(1, 51):
        writer.write(step, {"loss": 1.0 / step})
    assert writes == []
    writer.close()
    assert len(writes) == 1
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 51))
