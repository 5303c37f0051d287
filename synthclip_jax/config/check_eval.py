"""The checks of the evaluation keys: the dataset specs (zero-shot, retrieval, linear probe,
classify), that each local source exists, the recall/shot lists and the best-checkpoint
metric. No jax."""
from etils import epath

from synthclip_jax.config.check_common import fail, get, is_remote
from synthclip_jax.config.error import ConfigError
from synthclip_jax.data.shard_files import glob_shards
from synthclip_jax.evaluate import sources as eval_sources


def eval_specs(config) -> list:
    """[(key, source)] of every evaluation dataset; a malformed spec list fails here."""
    e, out = config.eval, []
    try:
        for key in ("eval.zeroshot", "eval.retrieval", "eval.classify"):
            out += [(key, src) for _, src in eval_sources.parse_specs(get(config, key), key)]
        for _, train, test in eval_sources.parse_probe_specs(e.linear_probe):
            out += [("eval.linear_probe", train), ("eval.linear_probe", test)]
    except ValueError as bad:
        key = str(bad).split("=", 1)[0]
        raise ConfigError(key, f"{bad}; fix --config.{key}") from None
    return out


def check_eval_source(key: str, source: str) -> None:
    if is_remote(source) or source.startswith(eval_sources.TFDS_PREFIX):
        return  # remote, or found in the TFDS data_dir by the reader (which names it)
    kind = eval_sources.source_kind(source)
    if kind == "tfrecord" and not glob_shards(source):
        fail(key, source, "matches no file", f"point --config.{key} at existing TFRecord "
             "shards, or set it to '' (off)")
    if kind == "folder" and not epath.Path(source).is_dir():
        fail(key, source, "is not a folder, a TFRecord glob, tfds:NAME/SPLIT or a prepared TFDS "
             "dataset DIR/SPLIT", f"point --config.{key} at a folder of class sub-folders, or "
             "set it to '' (off)")


def check_eval(config) -> None:
    e, ck = config.eval, config.checkpoint
    eval_specs(config)
    for key in ("eval.retrieval_ks", "eval.linear_probe_shots"):
        values = get(config, key)
        if not all(isinstance(v, int) and v >= 1 for v in values):
            fail(key, tuple(values), "must be positive ints", f"set --config.{key}='(1, 5, 10)'")
    if ck.best_metric:
        kind = ck.best_metric.split("/")[0]
        sets = {"zeroshot": e.zeroshot, "retrieval": e.retrieval,
                "linear_probe": e.linear_probe, "classify": e.classify}.get(kind)
        if not sets:
            fail("checkpoint.best_metric", ck.best_metric, "names no configured evaluation",
                 "use a key eval.jsonl will hold (e.g. zeroshot/NAME/top1 with eval.zeroshot "
                 "set), or set it to '' (off)")
        if not e.every_steps:
            fail("checkpoint.best_metric", ck.best_metric, "needs evaluations during training "
                 "(eval.every_steps=0)", "set --config.eval.every_steps to a positive int")
