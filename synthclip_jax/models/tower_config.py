"""Per-tower model options that default to a shared value (no jax: the config check and the
exporters read them too).

`model.layernorm_eps` and `model.activation` set both towers; `model.image.X` / `model.text.X`
override one tower. An unset per-tower key (None, or absent in a workdir's config.json written
before the key existed) reads the shared value, so old configs keep their meaning.
"""

PER_TOWER = ("layernorm_eps", "activation")
TOWERS = ("image", "text")


def tower_option(model_cfg, tower: str, key: str):
    """model.{tower}.{key} if set, else the shared model.{key}."""
    assert key in PER_TOWER and tower in TOWERS, (tower, key)
    value = model_cfg[tower].get(key)
    return model_cfg[key] if value is None else value


def tower_key(model_cfg, tower: str, key: str) -> str:
    """The config key that decides `tower_option(model_cfg, tower, key)` (for messages)."""
    return f"model.{tower}.{key}" if model_cfg[tower].get(key) is not None else f"model.{key}"
