"""The config checked at the door: every choice and every relation, before any device work.

`main.py` calls `validate(config)` right after reading the flags, so a bad config fails in one
line naming the key, the value and the fix (status 2), not in a traceback minutes later deep in
the optimizer or the data pipeline. This module must not import jax: the valid names come from
`choices.py` (and the jax-free modules of text reduction and templates). Checks that need the
devices (the mesh's device count, the batch's divisibility over the data shards) stay where the
devices are known and raise the same `ConfigError`.

This file holds the entry (`validate`), the choices, the schedule, batch, mesh and compile
rules; the other rules live beside it by concern: `check_model.py`, `check_data.py`,
`check_eval.py`, `recipe_check.py`, `shapes.py` (tuple and path keys), with `check_common.py`
(`fail`, `get`, `at_least`). Callers keep calling `check.check_data(...)` etc.: the names are
imported here.
"""
from synthclip_jax.aot import targets
from synthclip_jax.config import choices
from synthclip_jax.config.axis_rules import MESH_AXES
from synthclip_jax.config.check_common import at_least, fail, get
from synthclip_jax.config.check_data import check_data, check_paths_exist, check_subset
from synthclip_jax.config.check_eval import check_eval, check_eval_source, eval_specs  # noqa: F401
from synthclip_jax.config.check_model import check_classify, check_clips, check_model
from synthclip_jax.config.recipe_check import check_recipes
from synthclip_jax.config.shapes import check_shapes
from synthclip_jax.data.text_reduction import MODES as TEXT_REDUCTIONS
from synthclip_jax.evaluate.suite import PER_DATASET
from synthclip_jax.evaluate.templates import TEMPLATE_SETS
from synthclip_jax.models.param_kinds import WEIGHT_DECAY_POLICIES

def validate(config, check_paths: bool = True, training: bool = True) -> None:
    """Raises ConfigError on the first bad key. `check_paths=False` skips whether the data and
    evaluation paths exist (a shipped recipe names paths of the machine it runs on);
    `training=False` (evaluation only) does not ask for training data."""
    check_shapes(config)  # tuple and path keys first: the checks below index into them
    check_choices(config)
    check_relations(config, training)
    if check_paths:
        check_paths_exist(config, training)


# key -> its valid names
CHOICES = {
    "loss.name": choices.LOSS_NAMES,
    "train.accum_negatives": choices.ACCUM_NEGATIVES,
    "train.task": choices.TASKS,
    "model.activation": choices.ACTIVATIONS,
    "model.dtype": choices.DTYPES,
    "model.attention_impl": choices.ATTENTION_IMPLS,
    "model.remat_policy": choices.REMAT_POLICIES,
    "optim.mu_dtype": choices.MU_DTYPES,
    "model.image.pool_type": choices.IMAGE_POOL_TYPES,
    "model.text.pool_type": choices.TEXT_POOL_TYPES,
    "data.source": choices.SOURCES,
    "data.text_reduction": TEXT_REDUCTIONS,
    "data.clusters.modality": choices.CLUSTER_MODALITIES,
    "optim.name": choices.OPTIMIZERS,
    "model.projection": choices.PROJECTIONS,
    "eval.templates": tuple(TEMPLATE_SETS) + (PER_DATASET,),
    "checkpoint.best_mode": choices.BEST_MODES,
    "data.read_mode": choices.READ_MODES,
    "log.wandb.mode": choices.WANDB_MODES,
    "optim.weight_decay_policy": WEIGHT_DECAY_POLICIES,
    "optim.lr_schedule": choices.LR_SCHEDULES,
    "model.text.tokenizer": choices.TOKENIZERS,
    "model.image.tower": choices.IMAGE_TOWERS,
    "model.image.resnet_depth": choices.RESNET_DEPTHS,
}


# key -> old names that still work
ALIASES = {"data.source": choices.SOURCE_ALIASES}


def check_choices(config) -> None:
    for key, names in CHOICES.items():
        value = get(config, key)
        if value not in names and value not in ALIASES.get(key, {}):
            fail(key, value, "is not a valid choice",
                 f"set --config.{key} to one of {', '.join(map(str, names))}")


def check_relations(config, training: bool = True) -> None:
    check_schedule(config)
    check_batch(config)
    check_mesh(config.mesh)
    check_model(config)
    check_data(config, training)
    check_clips(config)
    check_classify(config)
    check_subset(config)
    check_recipes(config, fail)
    for key in ("eval.every_steps", "checkpoint.every_steps", "log.every_steps"):
        at_least(config, key, 0)  # 0 turns it off
    at_least(config, "checkpoint.keep", 1)
    at_least(config, "log.peak_tflops", 0.0)  # 0 = no mfu
    at_least(config, "eval.batch_size", 1)
    at_least(config, "resume.stale_lock_minutes", 1)  # the heartbeat comes every few seconds
    at_least(config, "profile_steps", 0)
    check_compile(config)
    check_eval(config)


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
    for key in ("dcn_data", "dcn_fsdp"):
        if mesh[key] < 1:
            fail(f"mesh.{key}", mesh[key], "must be >= 1 (slices or nodes the axis spans)",
                 f"set --config.mesh.{key} to 1 (one slice) or the number of slices")
    for logical, mesh_axis in mesh.rules:
        axes = mesh_axis if isinstance(mesh_axis, (tuple, list)) else (mesh_axis,)
        for axis in axes:
            if axis is not None and axis not in MESH_AXES:
                fail("mesh.rules", f"{logical}->{axis}", "names no mesh axis",
                     f"map {logical!r} to one of {', '.join(MESH_AXES)} or None")


def check_compile(config) -> None:
    at_least(config, "compile.num_slices", 1)
    at_least(config, "compile.max_batch", 0)  # 0 = no search
    at_least(config, "compile.num_records", 0)  # 0 = no neighbour search compiled
    if config.compile.target:
        try:
            targets.parse(config.compile.target, config.compile.num_slices)
        except targets.BadTarget as bad:
            fail("compile.target", config.compile.target, f"is not a compile target ({bad})",
                 f"set --config.compile.target to e.g. {targets.EXAMPLES}")
