"""The syntax of a weighted mixture in `data.train`: "GLOB1:0.8,GLOB2:0.2".

Each comma-separated part is a glob of TFRecord shards and its weight after the last colon
(`gs://` globs keep their own colon). Weights are relative (normalised to sum to 1). Without a
weight `data.train` is one glob, as before. Stdlib only: config_check reads it before any
device or Grain work; data/mixture.py builds the pipeline.
"""
import re

from synthclip_jax.config.error import ConfigError

_WEIGHT = re.compile(r"^(?P<glob>.+):(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def parse(spec: str) -> "list[tuple[str, float]] | None":
    """[(glob, normalised weight), ...] of a mixture, or None for a plain single glob.
    Raises ConfigError("data.train", ...) for a part without a weight or a weight <= 0."""
    parts = [p.strip() for p in spec.split(",")]
    matches = [_WEIGHT.match(p) for p in parts]
    if len(parts) == 1 and matches[0] is None:
        return None
    bad = [p for p, m in zip(parts, matches) if m is None or float(m["weight"]) <= 0]
    if bad:
        raise ConfigError("data.train", f"data.train={spec!r}: part {bad[0]!r} needs a positive "
                          "weight after a colon; write a mixture as 'GLOB1:0.8,GLOB2:0.2', or "
                          "give one glob")
    total = sum(float(m["weight"]) for m in matches)
    return [(m["glob"], float(m["weight"]) / total) for m in matches]
