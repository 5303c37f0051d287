"""Streamed evaluation split across 2 JAX processes (2 fake CPU devices each, joined on
localhost as in tests/test_multihost.py) gives the metrics of one process: each process decodes
only its records, and every process ends with every record's features."""
import json
import subprocess
import sys

import jax
import pytest

from tests.test_eval_suite import write_sets
from tests.test_multihost import NUM_PROCESSES, ROOT, free_port, kill_group, process_env

DRIVER = r'''
import json, sys
from synthclip_jax.run import distributed
distributed.maybe_initialize()
import jax
from tests.test_eval_multiprocess import evaluate
out = evaluate(sys.argv[1])
out["process_count"] = jax.process_count()
with open(f"{sys.argv[2]}.{jax.process_index()}.json", "w") as f:
    json.dump(out, f)
'''


def evaluate(root: str) -> dict:
    from flax import nnx

    from synthclip_jax import sharding
    from synthclip_jax.evaluate import retrieval, zeroshot
    from synthclip_jax.evaluate.encode import Encoder
    from synthclip_jax.models.two_tower import build_model
    from tests.test_train_parallel import tiny_train_config

    config = tiny_train_config("softmax", (-1, 1, 1))
    config.model.text.update(vocab_size=49408, context_length=16)
    config.data.image_size = 32
    model = build_model(config, 3)
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    encoder = Encoder(nnx.graphdef(model), mesh, batch_size=8)
    params = nnx.to_pure_dict(nnx.state(model))
    d = config.data
    out = zeroshot.evaluate(encoder, params, zeroshot.ZeroShotSet(
        f"{root}/folder", 32, d.mean, d.std, name="zs"), "simple", 16)
    out.update(retrieval.evaluate(encoder, params, retrieval.RetrievalSet(
        f"{root}/captioned/*.tfrecord", 32, d.mean, d.std, 16, name="rt")))
    return out


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tmp_path):
    write_sets(tmp_path, n=21)  # not a multiple of the batch: padding on both processes
    single = evaluate(str(tmp_path))
    port, out = free_port(), tmp_path / "result"
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(out)],
                              env=process_env(i, port), cwd=ROOT, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(NUM_PROCESSES)]
    try:
        for proc in procs:
            output, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, output[-3000:]
    finally:
        for proc in procs:
            kill_group(proc)
    for i in range(NUM_PROCESSES):
        got = json.loads((tmp_path / f"result.{i}.json").read_text())
        assert got.pop("process_count") == NUM_PROCESSES
        assert got == pytest.approx(single)
