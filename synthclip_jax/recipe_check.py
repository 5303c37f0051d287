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
