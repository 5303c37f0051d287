"""The training data sources a config may name (`data.source`), without importing jax, so the
config check at the door can read them; `source.py` builds each."""

SOURCES = ("synthetic_shapes", "tfrecord")
