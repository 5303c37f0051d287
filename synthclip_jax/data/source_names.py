"""The training data sources a config may name (`data.source`), without importing jax, so the
config check at the door can read them; `source.py` builds each."""

SOURCES = ("shapes", "tfrecord")
# Old names still accepted: configs and command lines written before the rename keep working.
SOURCE_ALIASES = {"synthetic_shapes": "shapes"}


def canonical_source(name: str) -> str:
    return SOURCE_ALIASES.get(name, name)
