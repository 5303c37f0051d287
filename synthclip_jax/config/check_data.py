"""The checks of the data keys: source and text reduction, the mixture, augmentation, read
modes, SimCLIP clusters, the softmax-loss options, the subset, and whether the data and
evaluation paths exist. No jax."""
from etils import epath

from synthclip_jax.config import choices
from synthclip_jax.config.check_common import at_least, fail, get, is_remote
from synthclip_jax.config.check_eval import check_eval_source, eval_specs
from synthclip_jax.data import mixture_spec
from synthclip_jax.data.shard_files import glob_shards


def check_data(config, training: bool = True) -> None:
    d = config.data
    source = choices.canonical_source(d.source)
    if d.text_reduction != "truncate" and source != "tfrecord":
        fail("data.text_reduction", d.text_reduction,
             f"needs data.source='tfrecord' (data.source={d.source!r} has no captions to cut)",
             "set --config.data.text_reduction=truncate or --config.data.source=tfrecord")
    if training and source == "tfrecord" and not d.train and d.procedural.num_train <= 0:
        fail("data.train", d.train, "is empty: no training shards (and data.procedural.num_train "
             "is 0, so no demo data is rendered)", "set --config.data.train to a glob of "
             "TFRecord shards")
    mixture = mixture_spec.parse(d.train) if source == "tfrecord" else None  # bad syntax: raises
    if training and mixture and d.batch_order:
        fail("data.batch_order", d.batch_order, "orders the records of one source, but "
             "data.train is a weighted mixture", "set --config.data.batch_order='' or give "
             "data.train one glob")
    low, high = d.rrc_scale
    if not 0 < low <= high <= 1:
        fail("data.rrc_scale", tuple(d.rrc_scale), "must satisfy 0 < low <= high <= 1",
             "set --config.data.rrc_scale='(0.9, 1.0)' or similar")
    at_least(config, "data.image_size", 1)
    at_least(config, "data.num_workers", 0)
    at_least(config, "data.prefetch_per_worker", 1)
    check_clusters(config)
    check_loss_options(config)
    at_least(config, "data.device_prefetch", 0)
    at_least(config, "data.read_block", 1)
    at_least(config, "data.read_lanes", 1)
    if d.read_mode != "random" and d.batch_order:
        fail("data.read_mode", d.read_mode, "reorders the records, but data.batch_order fixes "
             "the order", "set --config.data.read_mode=random with data.batch_order")
    if d.read_mode != "random" and (mixture or d.clusters.enabled):
        what = "a weighted mixture" if mixture else "SimCLIP's cluster order (data.clusters)"
        fail("data.read_mode", d.read_mode, f"has its own block order, but {what} sets the "
             "record order", "set --config.data.read_mode=random")
    fraction = d.max_corrupt_fraction
    if not 0 <= fraction <= 1:
        fail("data.max_corrupt_fraction", fraction, "must lie in [0, 1]",
             "set --config.data.max_corrupt_fraction to a fraction such as 0.001")


def check_paths_exist(config, training: bool = True) -> None:
    d, e = config.data, config.eval
    tfrecord = training and choices.canonical_source(d.source) == "tfrecord"
    for pattern, _ in (tfrecord and mixture_spec.parse(d.train)) or [(d.train, 1)]:  # each source
        if tfrecord and pattern and not is_remote(pattern) and epath.Path(pattern).is_dir():
            fail("data.train", d.train, "is a directory, not a glob of shards", "select its "
                 f"shards: --config.data.train='{pattern.rstrip('/')}/*.tfrecord'")
        if tfrecord and pattern and not is_remote(pattern) and not glob_shards(pattern):
            where = "" if pattern == d.train else f" in {pattern!r}"
            fail("data.train", d.train, f"matches no file{where}", "point --config.data.train at "
                 "existing TFRecord shards (a glob such as DIR/*.tfrecord)")
    for key, source in eval_specs(config):
        check_eval_source(key, source)
    if training and config.init_from and not is_remote(config.init_from) \
            and not epath.Path(config.init_from).exists():
        fail("init_from", config.init_from, "does not exist", "point --config.init_from at a "
             "workdir, an OpenCLIP dir, a CLIPModel dir or a weights file, or set it to ''")
    vocab = config.model.text.vocab_path
    if vocab and not is_remote(vocab):
        if not epath.Path(vocab).is_file():
            fail("model.text.vocab_path", vocab, "is not a file", "point --config.model.text."
                 "vocab_path at a WordPiece vocab.txt (one token per line)")
        entries = len(epath.Path(vocab).read_text().splitlines())
        if entries > config.model.text.vocab_size:
            fail("model.text.vocab_path", vocab, f"has {entries} tokens, more than "
                 f"model.text.vocab_size={config.model.text.vocab_size}",
                 "raise --config.model.text.vocab_size or use a smaller vocab")
    if training and d.batch_order and not is_remote(d.batch_order) and not epath.Path(d.batch_order).is_file():
        fail("data.batch_order", d.batch_order, "is not a file", "point --config.data.batch_order "
             "at a .npy from tools/similarity_order.py, or set it to '' (seeded shuffle)")


def check_clusters(config) -> None:
    """data.clusters (SimCLIP cluster batches, train/online_clusters.py)."""
    d, c = config.data, config.data.clusters
    at_least(config, "data.clusters.cluster_size", 2)
    at_least(config, "data.clusters.neighborhood", 1)
    at_least(config, "data.clusters.every_steps", 0)
    if not 0 < c.proportion <= 1:
        fail("data.clusters.proportion", c.proportion, "must lie in (0, 1]",
             "set --config.data.clusters.proportion to the clustered share of a batch, e.g. 1.0")
    epochs = tuple(c.warmup_epochs)
    if any(not isinstance(e, int) or e < 1 for e in epochs):
        fail("data.clusters.warmup_epochs", epochs, "must be epochs >= 1 (ints)",
             "set --config.data.clusters.warmup_epochs='(4, 6, 8)' or '()' (no warmup)")
    if not c.enabled:
        return
    if choices.canonical_source(d.source) != "tfrecord":
        fail("data.clusters.enabled", True, f"needs data.source='tfrecord' (data.source="
             f"{d.source!r} has no records to embed)", "set --config.data.source=tfrecord")
    if d.batch_order:
        fail("data.clusters.enabled", True, f"conflicts with data.batch_order={d.batch_order!r} "
             "(both set the record order)", "set --config.data.batch_order='' or "
             "--config.data.clusters.enabled=False")


def check_loss_options(config) -> None:
    """loss.label_smoothing and loss.softmax_bias (softmax loss options, losses.py)."""
    loss = config.loss
    if not 0 <= loss.label_smoothing < 1:
        fail("loss.label_smoothing", loss.label_smoothing, "must lie in [0, 1)",
             "set --config.loss.label_smoothing to e.g. 0.1, or 0 (off)")
    if loss.name != "softmax" and (loss.label_smoothing or loss.softmax_bias):
        key = "loss.label_smoothing" if loss.label_smoothing else "loss.softmax_bias"
        fail(key, get(config, key), f"is an option of the softmax loss, not loss.name="
             f"{loss.name!r}", f"set --config.{key} to its default or --config.loss.name=softmax")
    if loss.softmax_bias and config.model.logit_bias_init is None:
        fail("loss.softmax_bias", True, "needs a logit bias parameter (model.logit_bias_init is "
             "unset)", "set --config.model.logit_bias_init=0.0 (simple-clip's init)")


def check_subset(config) -> None:
    """data.subset_records (data/pipeline.py): the first N of a fixed order of the records."""
    d = config.data
    at_least(config, "data.subset_records", 0)
    if d.subset_records and (d.batch_order or d.read_mode != "random"
                             or d.source != "tfrecord" or mixture_spec.parse(d.train)):
        fail("data.subset_records", d.subset_records, "needs data.source='tfrecord' with one "
             "glob, data.read_mode='random' and no data.batch_order",
             "set --config.data.subset_records=0 or drop the other option")
