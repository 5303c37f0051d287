"""Training stages (`train.stages`; CLIPA's schedule: low resolution, masked, short text, then a
short full-resolution unmasked stage). One run, one step counter, one learning-rate schedule
over `total_steps`; each stage changes only what it names (train/stage_spec.py: image_size,
patch_dropout, lr_scale, context_length, partial_caption_tokens, batch_size), and its length,
`steps` or `fraction` (of `total_steps`, rounded); the lengths add up to `total_steps`, and the
last stage's resolution is `data.image_size` (the one evaluation, export and `--mode=eval`
use). At a resolution switch the image position embeddings are resized (models/pos_embed.py,
= OpenCLIP resize_pos_embed); a shorter text context reads the first N text position
embeddings, whose table keeps `model.text.context_length` rows, so a text switch changes no
parameter. A batch size switch rebuilds the input pipeline at the examples consumed so far
(the data state counts examples, not batches), so no example is skipped or repeated; each
stage's `examples_before` says how many came before it (the `examples_seen` metric).

The trainer (train/loop.py) runs the stages one after another in the same workdir, each up to
its last step; the stage of a step is the one whose steps (start, end] hold it, so a
checkpoint's stage follows from its step, and `metrics.jsonl` rows carry it as `stage`. At a
switch the previous stage's last checkpoint is restored with that stage's shapes and carried
over (`carry_over`): the position embeddings (and their EMA) resized, their Adam moments
started again at zero (a resized embedding is a new parameter), everything else as it was.
An uninterrupted run goes through that same checkpoint, so resuming anywhere, right before or
right after a switch, computes what the straight run computes.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from synthclip_jax.models.pos_embed import resize_image_pos
from synthclip_jax.train.stage_spec import stage_config

IMAGE_POS = ("visual", "positional_embedding")


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    start: int  # steps (start, end] belong to this stage
    end: int
    config: object  # the run's config with this stage's values
    examples_before: int = 0  # training examples of the stages before this one
    examples_after: int = 0  # and of those after it (the ETA)


def lengths(config) -> list:
    total = config.total_steps
    return [int(s["steps"]) if "steps" in s else int(round(s["fraction"] * total))
            for s in config.train.stages]


def plan(config) -> list:
    """The run's stages; one stage (the config itself) when `train.stages` is empty."""
    stages = config.train.get("stages", ())  # .get: configs from before the key
    if not stages:
        return [Stage(0, 0, config.total_steps, config)]
    out, start, examples = [], 0, 0
    for index, (spec, length) in enumerate(zip(stages, lengths(config))):
        c = stage_config(config, spec)
        out.append(Stage(index, start, start + length, c, examples_before=examples))
        start += length
        examples += length * c.batch_size
    return [dataclasses.replace(s, examples_after=examples - s.examples_before
                                - (s.end - s.start) * s.config.batch_size) for s in out]


def examples_seen(stage: Stage, step: int) -> int:
    """Training examples consumed by the end of `step` (a step of `stage`)."""
    return stage.examples_before + (step - stage.start) * stage.config.batch_size


def stage_of_step(stages: list, step: int) -> Stage:
    return next((s for s in stages if s.start < step <= s.end), stages[0])


def carry_over(state, old_abstract: dict, new_abstract: dict) -> dict:
    """A train state of the previous stage's shapes -> this stage's (placed as `new_abstract`
    says): equal shapes kept, the image position embeddings resized (params and EMA), other
    shape changes (Adam's moments of those embeddings) started at zero."""
    def convert(path, old, new):
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if old.shape == new.shape:
            return jax.device_put(old, new.sharding)
        if names[-2:] == IMAGE_POS and names[0] in ("params", "ema"):
            host = np.asarray(jax.device_get(old), np.float32)
            return jax.device_put(resize_image_pos(host, new.shape[0]).astype(new.dtype),
                                  new.sharding)
        if names[0] == "opt_state":
            return jax.device_put(jnp.zeros(new.shape, new.dtype), new.sharding)
        raise ValueError(f"stage switch: {'/'.join(names)} changes shape {old.shape} -> "
                         f"{new.shape}, which no stage key should do")

    del old_abstract  # the restored state has its shapes already
    return jax.tree_util.tree_map_with_path(convert, state, new_abstract)
