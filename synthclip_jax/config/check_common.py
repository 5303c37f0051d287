"""What every config check shares: reading a dotted key, failing with one line (key, value,
problem, fix), a lower bound. No jax."""
from synthclip_jax.config.error import ConfigError


def fail(key: str, value, problem: str, fix: str):
    raise ConfigError(key, f"{key}={value!r} {problem}; {fix}")


def get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def at_least(config, key: str, low) -> None:
    value = get(config, key)
    if value < low:
        fail(key, value, f"must be >= {low}", f"set --config.{key} to {low} or more")


def is_remote(path: str) -> bool:
    # gs://... cannot be listed offline or without credentials; the reader reports those
    return "://" in path
