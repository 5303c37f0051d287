"""metrics.jsonl says where the time went (data wait vs step) and, where the backend reports
it, device memory."""
import json
import time

import jax
import pytest

from synthclip_jax.run import device_memory
from synthclip_jax.train import loop
from tests.source_wrappers import ForwardingSource
from tests.test_train_parallel import tiny_train_config

SLOW_BATCH_SEC = 0.3


class SlowSource(ForwardingSource):
    """The data source, but each batch takes SLOW_BATCH_SEC more: an input-bound run."""

    def __next__(self):
        time.sleep(SLOW_BATCH_SEC)
        return next(self.inner)


@pytest.mark.slow
def test_metrics_rows_carry_data_wait_and_step_time(tmp_path, monkeypatch):
    make = loop.make_train_source
    monkeypatch.setattr(loop, "make_train_source", lambda c: SlowSource(make(c)))
    config = tiny_train_config()
    config.total_steps, config.log.every_steps, config.checkpoint.every_steps = 4, 1, 0
    loop.train(config, tmp_path, devices=jax.devices()[:1])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows[1:]:  # the first row's interval holds the compilation
        assert r["data_wait_sec"] >= SLOW_BATCH_SEC * 0.9
        assert r["step_sec"] >= r["data_wait_sec"]
    # CPU reports no device memory: the keys are absent, not zero.
    assert jax.local_devices()[0].memory_stats() is None
    assert not any("device_memory_bytes" in r or "device_peak_bytes" in r for r in rows)


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_device_memory_where_the_backend_reports_it():
    gib = device_memory.GIB
    got = device_memory.device_memory(FakeDevice({"bytes_in_use": 3 * gib,
                                                  "peak_bytes_in_use": 4 * gib,
                                                  "bytes_limit": 16 * gib}))
    assert got == {"device_memory_bytes": 3 * gib, "device_peak_bytes": 4 * gib}
    assert device_memory.describe(got) == "  mem 3.0/4.0 GiB"
    assert device_memory.device_memory(FakeDevice(None)) == {}
    assert device_memory.describe({}) == ""
