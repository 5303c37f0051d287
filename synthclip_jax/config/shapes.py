"""Tuple-, list- and path-valued config keys checked at the door for type, length and range,
as `config_check` checks the scalar keys. Without it `data.mean` with two values failed after
compilation with a broadcasting error, and `data.rrc_scale=0.5` crashed inside the config check
itself. Called first by `config_check.validate`; jax-free like it.
"""
from synthclip_jax.config.error import ConfigError


class Sequence:
    """A tuple key: `length` items (None: any number, `min_length` at least), each of
    `kind` (float accepts ints) within [low, high] (None: unbounded; `above`: low excluded)."""

    def __init__(self, kind, length=None, low=None, high=None, above=False, min_length=0,
                 example=""):
        self.kind, self.length, self.low, self.high = kind, length, low, high
        self.above, self.min_length, self.example = above, min_length, example

    def problem(self, value):
        if not isinstance(value, (tuple, list)):
            return f"is a {type(value).__name__}, not a tuple"
        if self.length is not None and len(value) != self.length:
            return f"has {len(value)} values, not {self.length}"
        if len(value) < self.min_length:
            return f"has {len(value)} values, fewer than {self.min_length}"
        kinds = (int, float) if self.kind is float else (int,)
        for item in value:
            if isinstance(item, bool) or not isinstance(item, kinds):
                return f"holds {item!r}, not {'a number' if self.kind is float else 'an int'}"
            if self.low is not None and (item <= self.low if self.above else item < self.low):
                return f"holds {item!r}, must be {'>' if self.above else '>='} {self.low}"
            if self.high is not None and item > self.high:
                return f"holds {item!r}, must be <= {self.high}"
        return None


SEQUENCES = {
    "data.mean": Sequence(float, 3, 0.0, 1.0, example="(0.481, 0.458, 0.408)"),
    "data.std": Sequence(float, 3, 0.0, above=True, example="(0.269, 0.261, 0.276)"),
    "data.rrc_scale": Sequence(float, 2, 0.0, 1.0, above=True, example="(0.9, 1.0)"),
    "data.clusters.warmup_epochs": Sequence(int, low=0, example="(4, 6, 8)"),
    "eval.linear_probe_shots": Sequence(int, low=1, example="(1, 5, 10)"),
    "eval.retrieval_ks": Sequence(int, low=1, min_length=1, example="(1, 5, 10)"),
}
# Keys naming files, folders or globs: a string ('' = unset).
PATH_KEYS = ("data.train", "data.batch_order", "eval.zeroshot", "eval.retrieval",
             "eval.linear_probe", "eval.tfds_data_dir", "init_from", "compile_cache_dir",
             "model.text.vocab_path")


def _get(config, key):
    node = config
    for part in key.split("."):
        if part not in node:
            return _ABSENT
        node = node[part]
    return node


_ABSENT = object()


def check_shapes(config) -> None:
    """Raises ConfigError naming the first tuple or path key of the wrong type, length or
    range."""
    for key, rule in SEQUENCES.items():
        value = _get(config, key)
        if value is _ABSENT:
            continue
        problem = rule.problem(value)
        if problem:
            raise ConfigError(key, f"{key}={value!r} {problem}; set --config.{key}="
                                   f"'{rule.example}' or similar")
    for key in PATH_KEYS:
        value = _get(config, key)
        if value is not _ABSENT and not isinstance(value, str):
            raise ConfigError(key, f"{key}={value!r} is a {type(value).__name__}, not a path; "
                                   f"set --config.{key} to a path or glob string, or '' for none")
