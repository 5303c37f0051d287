"""config_check's rules for the recipe keys (patch dropout, EMA, locked towers); no jax."""
import math


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


STAGE_KEYS = ("steps", "fraction", "image_size", "patch_dropout", "lr_scale")
STAGE_KEYS_NOT_YET = ("context_length", "partial_caption_tokens", "batch_size")


def check_stages(config, fail) -> None:
    """train.stages (train/stages.py): known keys, one length each, lengths adding up to
    total_steps, resolutions the ViT can take, the last one data.image_size."""
    stages = config.train.stages
    if not stages:
        return
    total, lengths = config.total_steps, []
    for i, spec in enumerate(stages):
        key = f"train.stages[{i}]"
        if not isinstance(spec, dict):
            fail(key, spec, "is not a dict", "give each stage as dict(steps=N, image_size=...)")
        for name in spec:
            if name in STAGE_KEYS_NOT_YET:
                fail(f"{key}.{name}", spec[name], "cannot change per stage yet (only "
                     f"{', '.join(STAGE_KEYS[2:])})", "set it for the whole run instead")
            if name not in STAGE_KEYS:
                fail(f"{key}.{name}", spec[name], "is not a stage key",
                     f"use {', '.join(STAGE_KEYS)}")
        if ("steps" in spec) == ("fraction" in spec):
            fail(key, spec, "needs exactly one of steps / fraction", "give its length once")
        length = (spec["steps"] if "steps" in spec else round(spec["fraction"] * total))
        if length < 1:
            fail(key, spec, "has no steps", "give every stage at least one step")
        lengths.append(length)
        size = spec.get("image_size", config.data.image_size)
        if size % config.model.image.patch_size:
            fail(f"{key}.image_size", size, "is not divisible by model.image.patch_size="
                 f"{config.model.image.patch_size}", "choose a multiple of the patch size")
        fraction = spec.get("patch_dropout", 0.0)
        if not 0 <= fraction < 1:
            fail(f"{key}.patch_dropout", fraction, "must lie in [0, 1)", "e.g. 0.5; 0 = off")
    if sum(lengths) != total:
        fail("train.stages", [f"{n} steps" for n in lengths], f"add up to {sum(lengths)}, not "
             f"total_steps={total}", "make the stages' steps / fractions cover the run exactly")
    last = stages[-1].get("image_size", config.data.image_size)
    if last != config.data.image_size:
        fail("train.stages[-1].image_size", last, f"differs from data.image_size="
             f"{config.data.image_size}, the resolution evaluation and export use",
             "end the schedule at data.image_size")
