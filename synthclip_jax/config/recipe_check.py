"""config_check's rules for the recipe keys (patch dropout, EMA, locked towers); no jax."""
import math

from synthclip_jax.config.choices import canonical_source
from synthclip_jax.train.stage_spec import STAGE_KEYS, stage_config, train_text_length


def kept_patches(config) -> int:
    """Patches an image keeps under model.image.patch_dropout (models/patch_dropout.py's
    rounding, repeated here so that this module needs no jax)."""
    m, size = config.model.image, config.data.image_size
    num = (size // m.patch_size) ** 2
    # .get: a workdir's config.json from before the key
    return num - math.floor(m.get("patch_dropout", 0.0) * num + 0.5)


def check_recipes(config, fail) -> None:
    """`fail(key, value, problem, fix)`: config_check's one-line error."""
    decay = config.train.ema_decay
    if not 0 <= decay < 1:
        fail("train.ema_decay", decay, "must lie in [0, 1)", "set --config.train.ema_decay to "
             "e.g. 0.9999 (0 = no EMA)")
    t = config.train
    for tower in ("image", "text"):
        key = f"train.lock_{tower}_unlocked_layers"
        n = t[f"lock_{tower}_unlocked_layers"]
        if not isinstance(n, int) or n < 0:
            fail(key, n, "must be an int >= 0", f"set --config.{key} to the number of last "
                 "blocks that keep training (0 = only the projection)")
        if n and not t[f"lock_{tower}"]:
            fail(key, n, f"has no effect without train.lock_{tower}",
                 f"set --config.train.lock_{tower}=True or leave {key} at 0")
    check_stages(config, fail)
    m = config.model.image
    fraction = m.patch_dropout
    if fraction:
        if not 0 <= fraction < 1:
            fail("model.image.patch_dropout", fraction, "must lie in [0, 1)",
                 "set --config.model.image.patch_dropout to e.g. 0.5 (0 = off)")
        if m.tower == "resnet":
            fail("model.image.patch_dropout", fraction, "drops ViT patch tokens; "
                 "model.image.tower='resnet' has none", "set it to 0 with a ResNet tower")
        if kept_patches(config) < 1:
            fail("model.image.patch_dropout", fraction, "drops every patch at data.image_size="
                 f"{config.data.image_size}", "lower it so that at least one patch stays")


def check_text_length(config, fail, key="data.train_context_length", value=None,
                      check_partial=True) -> None:
    """A training text length (the run's, or a stage's `context_length`): 0 (the model's
    context) or from the tokenizer's shortest row up to model.text.context_length, and room
    for data.partial_caption_tokens."""
    t = config.model.text
    value = config.data.get("train_context_length", 0) if value is None else value
    shortest = 4 if t.tokenizer == "clips_wordpiece" else 3  # config_check's rule
    if not isinstance(value, int) or (value and not shortest <= value <= t.context_length):
        fail(key, value, f"must be 0 or an int in [{shortest}, model.text.context_length="
             f"{t.context_length}]", "shorter rows read the first position embeddings; the "
             "table is model.text.context_length long")
    keep = (value or t.context_length) - 2
    if check_partial and config.data.partial_caption_tokens > keep:
        fail(key, value, f"leaves {keep} caption tokens, fewer than "
             f"data.partial_caption_tokens={config.data.partial_caption_tokens}",
             "lower partial_caption_tokens (per stage if need be) or lengthen the rows")


def check_stages(config, fail) -> None:
    """train.stages (train/stages.py): known keys, one length each, lengths adding up to
    total_steps, each stage's values valid (checked on the stage's config), the last
    resolution data.image_size."""
    check_text_length(config, fail)
    stages = config.train.stages
    if not stages:
        return
    total, lengths = config.total_steps, []
    for i, spec in enumerate(stages):
        key = f"train.stages[{i}]"
        if not isinstance(spec, dict):
            fail(key, spec, "is not a dict", "give each stage as dict(steps=N, image_size=...)")
        for name in spec:
            if name not in STAGE_KEYS:
                fail(f"{key}.{name}", spec[name], "is not a stage key",
                     f"use {', '.join(STAGE_KEYS)}")
        if ("steps" in spec) == ("fraction" in spec):
            fail(key, spec, "needs exactly one of steps / fraction", "give its length once")
        length = (spec["steps"] if "steps" in spec else round(spec["fraction"] * total))
        if length < 1:
            fail(key, spec, "has no steps", "give every stage at least one step")
        lengths.append(length)
        check_stage_values(config, spec, key, fail)
    if sum(lengths) != total:
        fail("train.stages", [f"{n} steps" for n in lengths], f"add up to {sum(lengths)}, not "
             f"total_steps={total}", "make the stages' steps / fractions cover the run exactly")
    last = stages[-1].get("image_size", config.data.image_size)
    if last != config.data.image_size:
        fail("train.stages[-1].image_size", last, f"differs from data.image_size="
             f"{config.data.image_size}, the resolution evaluation and export use",
             "end the schedule at data.image_size")


def check_stage_values(config, spec: dict, key: str, fail) -> None:
    c = stage_config(config, spec)
    size = c.data.image_size
    if size % config.model.image.patch_size:
        fail(f"{key}.image_size", size, "is not divisible by model.image.patch_size="
             f"{config.model.image.patch_size}", "choose a multiple of the patch size")
    fraction = c.model.image.patch_dropout
    if not 0 <= fraction < 1:
        fail(f"{key}.patch_dropout", fraction, "must lie in [0, 1)", "e.g. 0.5; 0 = off")
    if "context_length" in spec:
        check_text_length(c, fail, f"{key}.context_length", spec["context_length"],
                          check_partial="partial_caption_tokens" not in spec)
    tokens = c.data.partial_caption_tokens
    if not isinstance(tokens, int) or tokens < 0:
        fail(f"{key}.partial_caption_tokens", tokens, "must be an int >= 0", "0 = the whole row")
    keep = train_text_length(c) - 2
    if tokens > keep:
        fail(f"{key}.partial_caption_tokens", tokens, f"exceeds the stage's {keep} caption "
             f"tokens (its text rows are {keep + 2} long)", "lower it or lengthen the rows")
    if tokens and canonical_source(config.data.source) != "tfrecord":
        fail(f"{key}.partial_caption_tokens", tokens, "needs data.source='tfrecord' (the "
             "source with captions to cut)", "set it to 0 or train from TFRecord shards")
    batch = c.batch_size
    if "batch_size" in spec:
        accum = config.train.grad_accum_steps
        if not isinstance(batch, int) or batch < 1 or batch % accum:
            fail(f"{key}.batch_size", batch, f"must be an int >= 1 divisible by "
                 f"train.grad_accum_steps={accum}", "give a multiple of the accumulation steps")
        if batch != config.batch_size and (config.data.clusters.enabled
                                           or config.data.batch_order):
            fail(f"{key}.batch_size", batch, "changes the batch size of a fixed batch layout "
                 "(data.clusters / data.batch_order are cut into batch_size batches)",
                 "keep batch_size in every stage with those")
