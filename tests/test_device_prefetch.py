"""No idle device: batches transferred ahead (data.device_prefetch) change nothing but timing;
the persistent compilation cache and the profiler trace land where the config says."""
import json

import jax
import numpy as np
import pytest

from synthclip_jax import sharding
from synthclip_jax.data.device_prefetch import DevicePrefetch
from synthclip_jax.data.shapes import ShapesSource
from tests.test_models import tiny_config


def shapes(seed=0):
    return ShapesSource(seed=seed, global_batch=8, image_size=16, context_length=7,
                        vocab_size=50, mean=(0.5,) * 3, std=(0.5,) * 3, process_index=0,
                        process_count=1)


def mesh():
    return sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.devices()[:2])


def test_prefetched_batches_and_resume_state_equal_the_plain_source():
    m = mesh()
    plain, ahead = shapes(), DevicePrefetch(shapes(), m, depth=2)
    states, texts = [], []
    for _ in range(4):
        want = plain.__next__()
        texts.append(want["text"])
        got = next(ahead)
        assert isinstance(got["image"], jax.Array) and got["image"].sharding.mesh == m
        for key in ("image", "text"):
            np.testing.assert_array_equal(np.asarray(got[key]), want[key])
        # the state is that of the batches handed out, not of those transferred ahead
        assert ahead.get_state() == plain.get_state()
        states.append(plain.get_state())
    assert len(ahead.queue) == 2
    resumed = DevicePrefetch(shapes(), m, depth=2)
    resumed.set_state(states[1])  # as after a checkpoint at batch 2
    np.testing.assert_array_equal(np.asarray(next(resumed)["text"]), texts[2])


def train_config(prefetch):
    c = tiny_config()
    c.data.source = "shapes"
    c.batch_size, c.total_steps, c.warmup_steps = 8, 4, 1
    c.data.device_prefetch = prefetch
    c.log.every_steps, c.checkpoint.every_steps, c.eval.every_steps = 1, 0, 0
    return c


@pytest.mark.slow
def test_prefetch_keeps_losses_identical_and_profile_and_cache_are_written(tmp_path):
    from synthclip_jax.train.loop import train

    losses = {}
    min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
    old_dir = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        for prefetch in (0, 2):
            c = train_config(prefetch)
            if prefetch:
                c.profile_steps, c.compile_cache_dir = 1, "jax_cache"
            workdir = tmp_path / f"p{prefetch}"
            train(c, workdir, devices=jax.devices()[:2])
            rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
            losses[prefetch] = [r["loss"] for r in rows]
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
        jax.config.update("jax_compilation_cache_dir", old_dir)
        from jax.experimental.compilation_cache import compilation_cache
        compilation_cache.reset_cache()
    assert len(losses[0]) == 4 and losses[0] == losses[2]
    assert list((tmp_path / "p2" / "profile").rglob("*.xplane.pb"))
    assert not (tmp_path / "p0" / "profile").exists()
    assert any((tmp_path / "p2" / "jax_cache").iterdir())
