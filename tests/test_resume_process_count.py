"""A run saved on P processes resumes on Q processes with the same global batches.

The data position in a checkpoint is global (examples consumed by all processes), so a SLURM
requeue onto fewer nodes or a move to a smaller slice continues the data where it stopped. The
reference is one process reading the same shards from the start: global batch n of a run on
any process count holds the rows of its batch n (row order within a batch follows the
processes, and the loss does not depend on it).
"""
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from synthclip_jax.data.pipeline import make_grain_source
from synthclip_jax.data.shapes_demo import write_shards
from synthclip_jax.train import loop
from tests.source_wrappers import ForwardingSource
from tests.test_multihost import run_processes
from tests.test_train_parallel import tiny_train_config

SAVED_AT, TOTAL = 2, 4

DRIVER = r'''
import json, sys
from synthclip_jax.run import distributed
distributed.maybe_initialize()

import jax
import numpy as np
from synthclip_jax.train import loop
from tests.test_resume_process_count import config_for, recording_source

args = json.loads(sys.argv[1])
config = config_for(args["pattern"], args["total"])
batches = []
loop.make_train_source = recording_source(loop.make_train_source, batches)
loop.train(config, args["workdir"])
np.savez(f"{args['out']}.{jax.process_index()}.npz",
         **{f"{k}_{n}": b[k] for n, b in enumerate(batches) for k in ("image", "text")})
with open(f"{args['out']}.{jax.process_index()}.json", "w") as f:
    json.dump({"process_count": jax.process_count()}, f)
'''


def config_for(pattern, total):
    c = tiny_train_config("softmax", (4, 1, 1))
    c.batch_size = 8
    c.model.text.update(vocab_size=49408, context_length=16)
    c.data.update(source="tfrecord", train=pattern, num_workers=0)
    c.total_steps, c.checkpoint.every_steps, c.log.every_steps = total, 0, 1
    # Recording keeps the batches as they are drawn: none may be drawn ahead of its step.
    c.data.device_prefetch = 0
    return c


class Recording(ForwardingSource):
    """A train source that also appends each host batch to `batches`."""

    def __init__(self, inner, batches):
        super().__init__(inner)
        self.batches = batches

    def __next__(self):
        batch = next(self.inner)
        self.batches.append(batch)
        return batch


def recording_source(make_source, batches):
    return lambda config: Recording(make_source(config), batches)


def sorted_rows(batch: dict) -> np.ndarray:
    """A global batch's (image, text) rows in a canonical order: the rows as a multiset."""
    flat = np.concatenate([batch["image"].reshape(len(batch["text"]), -1),
                           batch["text"].astype(np.float32)], axis=1)
    return flat[np.lexsort(flat.T[::-1])]


def assert_same_batches(got: list, want: list):
    assert len(got) == len(want)
    for n, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(sorted_rows(a), sorted_rows(b), err_msg=f"batch {n}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    # 48 captioned shapes in 3 shards: 6 global batches of 8.
    return write_shards(folder, "shapes", 0, 48, 3, seed=0, image_size=16)


def reference_batches(pattern, n):
    source = make_grain_source(config_for(pattern, n), 0, 1)
    return [next(source) for _ in range(n)]


def concat(batches: list) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in ("image", "text")}


def global_batches(sources, n):
    """n global batches: each the rows of every process's next batch."""
    return [concat([next(s) for s in sources]) for _ in range(n)]


def test_source_state_moves_between_process_counts(shards):
    # In-process (Grain worker processes position themselves the same way: test_train_tfrecord).
    config = config_for(shards, TOTAL)
    reference = reference_batches(shards, 5)
    saved = [make_grain_source(config, p, 2) for p in range(2)]
    assert_same_batches(global_batches(saved, 2), reference[:2])
    state = json.loads(json.dumps(saved[0].get_state()))  # as the checkpoint holds it
    for count in (1, 4):
        resumed = [make_grain_source(config, p, count) for p in range(count)]
        for s in resumed:
            s.set_state(state)
        assert_same_batches(global_batches(resumed, 3), reference[2:])
        assert resumed[0].get_state()["global_examples"] == 5 * config.batch_size


def test_corrupt_count_rescaled_to_the_new_share(shards):
    config = config_for(shards, TOTAL)
    source = make_grain_source(config, 0, 4)
    source.set_state({"global_examples": 32, "process_count": 2, "corrupt": 4, "examples": 16})
    # Process 0 of 2 skipped 4 in its 16 examples; of 4 processes each has read 8.
    assert (source.corrupt, source.examples) == (2, 8)


def rows_by_step(out: str, count: int):
    """Global batches of a run's processes: [step] -> rows of all processes."""
    per_process = [np.load(f"{out}.{p}.npz") for p in range(count)]
    steps = len(per_process[0].files) // 2
    return [{k: np.concatenate([d[f"{k}_{n}"] for d in per_process]) for k in ("image", "text")}
            for n in range(steps)]


def losses(workdir: Path):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
def test_two_processes_resume_on_one_and_on_four(tmp_path, shards):
    """Trained on 2 processes x 2 devices to step SAVED_AT, resumed on 1 process x 4 devices
    and on 4 processes x 1 device (the same 4-device mesh): both continue with the reference's
    global batches, and train the same steps."""
    reference = reference_batches(shards, TOTAL)
    saved = tmp_path / "saved"
    run_processes(tmp_path, "two", dict(pattern=shards, total=SAVED_AT, workdir=str(saved),
                                        out=str(tmp_path / "two")), 2, 2, DRIVER)
    assert_same_batches(rows_by_step(str(tmp_path / "two"), 2), reference[:SAVED_AT])

    four = tmp_path / "four"
    shutil.copytree(saved, four)
    run_processes(tmp_path, "four", dict(pattern=shards, total=TOTAL, workdir=str(four),
                                         out=str(tmp_path / "four")), 4, 1, DRIVER)
    got_four = rows_by_step(str(tmp_path / "four"), 4)

    one = tmp_path / "one"
    shutil.copytree(saved, one)
    batches = []
    config = config_for(shards, TOTAL)
    make = recording_source(loop.make_train_source, batches)
    original, loop.make_train_source = loop.make_train_source, make
    try:
        loop.train(config, one, devices=jax.devices()[:4])
    finally:
        loop.make_train_source = original

    assert_same_batches(got_four, reference[SAVED_AT:])
    assert_same_batches(batches, reference[SAVED_AT:])
    a, b = losses(four), losses(one)
    assert sorted(a) == sorted(b) == list(range(1, TOTAL + 1))
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=2e-5, atol=1e-6)
