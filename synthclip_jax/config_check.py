"""The config checked at the door: every choice and every relation, before any device work.

`main.py` calls `validate(config)` right after reading the flags, so a bad config fails in one
line naming the key, the value and the fix (status 2), not in a traceback minutes later deep in
the optimizer or the data pipeline. This module must not import jax: the valid names come from
`choices.py` (and the jax-free modules of text reduction and templates). Checks that need the
devices (the mesh's device count, the batch's divisibility over the data shards) stay where the
devices are known and raise the same `ConfigError`.
"""
from etils import epath

from synthclip_jax import choices
from synthclip_jax.axis_rules import MESH_AXES
from synthclip_jax.config_error import ConfigError
from synthclip_jax.data.text_reduction import MODES as TEXT_REDUCTIONS
from synthclip_jax.data.tfrecord import glob_shards
from synthclip_jax.evaluate.templates import TEMPLATE_SETS
from synthclip_jax.models.param_kinds import WEIGHT_DECAY_POLICIES


def validate(config, check_paths: bool = True, training: bool = True) -> None:
    """Raises ConfigError on the first bad key. `check_paths=False` skips whether the data and
    evaluation paths exist (a shipped recipe names paths of the machine it runs on);
    `training=False` (evaluation only) does not ask for training data."""
    check_choices(config)
    check_relations(config, training)
    if check_paths:
        check_paths_exist(config, training)


def fail(key: str, value, problem: str, fix: str):
    raise ConfigError(key, f"{key}={value!r} {problem}; {fix}")


def get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


# key -> its valid names
CHOICES = {
    "loss.name": choices.LOSS_NAMES,
    "train.accum_negatives": choices.ACCUM_NEGATIVES,
    "model.activation": choices.ACTIVATIONS,
    "model.dtype": choices.DTYPES,
    "model.image.pool_type": choices.IMAGE_POOL_TYPES,
    "model.text.pool_type": choices.TEXT_POOL_TYPES,
    "data.source": choices.SOURCES,
    "data.text_reduction": TEXT_REDUCTIONS,
    "data.read_mode": choices.READ_MODES,
    "log.wandb.mode": choices.WANDB_MODES,
    "eval.templates": tuple(TEMPLATE_SETS),
    "optim.weight_decay_policy": WEIGHT_DECAY_POLICIES,
}


# key -> old names that still work
ALIASES = {"data.source": choices.SOURCE_ALIASES}


def check_choices(config) -> None:
    for key, names in CHOICES.items():
        value = get(config, key)
        if value not in names and value not in ALIASES.get(key, {}):
            fail(key, value, "is not a valid choice",
                 f"set --config.{key} to one of {', '.join(names)}")


def at_least(config, key: str, low) -> None:
    value = get(config, key)
    if value < low:
        fail(key, value, f"must be >= {low}", f"set --config.{key} to {low} or more")


def check_relations(config, training: bool = True) -> None:
    check_schedule(config)
    check_batch(config)
    check_mesh(config.mesh)
    check_model(config)
    check_data(config, training)
    for key in ("eval.every_steps", "checkpoint.every_steps", "log.every_steps"):
        at_least(config, key, 0)  # 0 turns it off
    at_least(config, "checkpoint.keep", 1)
    at_least(config, "log.peak_tflops", 0.0)  # 0 = no mfu
    at_least(config, "eval.batch_size", 1)
    at_least(config, "resume.stale_lock_minutes", 1)  # the heartbeat comes every few seconds


def check_schedule(config) -> None:
    at_least(config, "total_steps", 0)
    at_least(config, "warmup_steps", 0)
    if not config.lr > 0:  # a negative rate is gradient ascent: it trains, to nonsense
        fail("lr", config.lr, "must be > 0", "set --config.lr to a positive learning rate")
    at_least(config, "weight_decay", 0.0)
    total, warmup = config.total_steps, config.warmup_steps
    # the cosine decay after the warmup needs at least one step (train/optimizer.py)
    if warmup >= total and not warmup == total == 0:
        fail("warmup_steps", warmup, f"must be < total_steps={total}",
             "lower --config.warmup_steps or raise --config.total_steps")


def check_batch(config) -> None:
    at_least(config, "batch_size", 1)
    at_least(config, "train.grad_accum_steps", 1)
    batch, accum = config.batch_size, config.train.grad_accum_steps
    if batch % accum:
        fail("batch_size", batch, f"is not divisible by train.grad_accum_steps={accum}",
             "make --config.batch_size a multiple of --config.train.grad_accum_steps")


def check_mesh(mesh) -> None:
    """What can be checked without devices: each size positive, or -1 (fill) at most once."""
    sizes = {axis: mesh[axis] for axis in MESH_AXES}
    for axis, size in sizes.items():
        if size != -1 and size < 1:
            fail(f"mesh.{axis}", size, "must be a positive device count or -1 (all remaining)",
                 f"set --config.mesh.{axis} to a positive int or -1")
    fills = [axis for axis, size in sizes.items() if size == -1]
    if len(fills) > 1:
        fail(f"mesh.{fills[1]}", -1, f"is the second -1 (mesh.{fills[0]} is -1 too): only one "
             "axis can take the remaining devices", f"set --config.mesh.{fills[1]} to a "
             "positive int")
    for logical, mesh_axis in mesh.rules:
        axes = mesh_axis if isinstance(mesh_axis, (tuple, list)) else (mesh_axis,)
        for axis in axes:
            if axis is not None and axis not in MESH_AXES:
                fail("mesh.rules", f"{logical}->{axis}", "names no mesh axis",
                     f"map {logical!r} to one of {', '.join(MESH_AXES)} or None")


def check_model(config) -> None:
    m = config.model
    image_size, patch = config.data.image_size, m.image.patch_size
    at_least(config, "model.image.patch_size", 1)
    if image_size % patch:
        fail("data.image_size", image_size, f"is not divisible by model.image.patch_size={patch}",
             "make --config.data.image_size a multiple of the patch size")
    for tower in ("image", "text"):
        width, heads = m[tower].width, m[tower].heads
        at_least(config, f"model.{tower}.heads", 1)
        if width % heads:
            fail(f"model.{tower}.width", width, f"is not divisible by model.{tower}.heads={heads}",
                 f"make --config.model.{tower}.width a multiple of the head count")
        at_least(config, f"model.{tower}.depth", 1)
    at_least(config, "model.embed_dim", 1)
    at_least(config, "model.text.context_length", 3)  # SOT, EOT and one token


def check_data(config, training: bool = True) -> None:
    d = config.data
    source = choices.canonical_source(d.source)
    if d.text_reduction != "truncate" and source != "tfrecord":
        fail("data.text_reduction", d.text_reduction,
             f"needs data.source='tfrecord' (data.source={d.source!r} has no captions to cut)",
             "set --config.data.text_reduction=truncate or --config.data.source=tfrecord")
    if training and source == "tfrecord" and not d.train and d.procedural.num_train <= 0:
        fail("data.train", d.train, "is empty: no training shards (and data.procedural.num_train "
             "is 0, so no demo data is rendered)", "set --config.data.train to a glob of "
             "TFRecord shards")
    low, high = d.rrc_scale
    if not 0 < low <= high <= 1:
        fail("data.rrc_scale", tuple(d.rrc_scale), "must satisfy 0 < low <= high <= 1",
             "set --config.data.rrc_scale='(0.9, 1.0)' or similar")
    at_least(config, "data.image_size", 1)
    at_least(config, "data.num_workers", 0)
    at_least(config, "data.prefetch_per_worker", 1)
    at_least(config, "data.read_block", 1)
    at_least(config, "data.read_lanes", 1)
    if d.read_mode != "random" and d.batch_order:
        fail("data.read_mode", d.read_mode, "reorders the records, but data.batch_order fixes "
             "the order", "set --config.data.read_mode=random with data.batch_order")
    fraction = d.max_corrupt_fraction
    if not 0 <= fraction <= 1:
        fail("data.max_corrupt_fraction", fraction, "must lie in [0, 1]",
             "set --config.data.max_corrupt_fraction to a fraction such as 0.001")


def is_remote(path: str) -> bool:
    # gs://... cannot be listed offline or without credentials; the reader reports those
    return "://" in path


def check_paths_exist(config, training: bool = True) -> None:
    d, e = config.data, config.eval
    if (training and choices.canonical_source(d.source) == "tfrecord" and d.train and not is_remote(d.train)
            and not glob_shards(d.train)):
        fail("data.train", d.train, "matches no file", "point --config.data.train at existing "
             "TFRecord shards (a glob such as DIR/*.tfrecord)")
    if e.retrieval and not is_remote(e.retrieval) and not glob_shards(e.retrieval):
        fail("eval.retrieval", e.retrieval, "matches no file", "point --config.eval.retrieval at "
             "existing TFRecord shards, or set it to '' (off)")
    if e.zeroshot and not is_remote(e.zeroshot) and not epath.Path(e.zeroshot).is_dir():
        fail("eval.zeroshot", e.zeroshot, "is not a folder", "point --config.eval.zeroshot at a "
             "folder of class sub-folders, or set it to '' (off)")
    if training and d.batch_order and not is_remote(d.batch_order) and not epath.Path(d.batch_order).is_file():
        fail("data.batch_order", d.batch_order, "is not a file", "point --config.data.batch_order "
             "at a .npy from tools/similarity_order.py, or set it to '' (seeded shuffle)")
