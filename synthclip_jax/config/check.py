"""The config checked at the door: every choice and every relation, before any device work.

`main.py` calls `validate(config)` right after reading the flags, so a bad config fails in one
line naming the key, the value and the fix (status 2), not in a traceback minutes later deep in
the optimizer or the data pipeline. This module must not import jax: the valid names come from
`choices.py` (and the jax-free modules of text reduction and templates). Checks that need the
devices (the mesh's device count, the batch's divisibility over the data shards) stay where the
devices are known and raise the same `ConfigError`.
"""
from etils import epath

from synthclip_jax.config import choices
from synthclip_jax.aot import targets
from synthclip_jax.config.axis_rules import MESH_AXES
from synthclip_jax.config.error import ConfigError
from synthclip_jax.config.shapes import check_shapes
from synthclip_jax.data import mixture_spec
from synthclip_jax.data.shard_files import glob_shards
from synthclip_jax.data.text_reduction import MODES as TEXT_REDUCTIONS
from synthclip_jax.data.tokenizer import VOCAB_SIZE as BPE_VOCAB_SIZE
from synthclip_jax.evaluate import sources as eval_sources
from synthclip_jax.evaluate.suite import PER_DATASET
from synthclip_jax.evaluate.templates import TEMPLATE_SETS
from synthclip_jax.models.param_kinds import WEIGHT_DECAY_POLICIES
from synthclip_jax.models.tower_config import TOWERS, tower_key, tower_option
from synthclip_jax.config.recipe_check import check_recipes


def validate(config, check_paths: bool = True, training: bool = True) -> None:
    """Raises ConfigError on the first bad key. `check_paths=False` skips whether the data and
    evaluation paths exist (a shipped recipe names paths of the machine it runs on);
    `training=False` (evaluation only) does not ask for training data."""
    check_shapes(config)  # tuple and path keys first: the checks below index into them
    check_choices(config)
    check_relations(config, training)
    if check_paths:
        check_paths_exist(config, training)


def fail(key: str, value, problem: str, fix: str):
    raise ConfigError(key, f"{key}={value!r} {problem}; {fix}")


def get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


# key -> its valid names
CHOICES = {
    "loss.name": choices.LOSS_NAMES,
    "train.accum_negatives": choices.ACCUM_NEGATIVES,
    "train.task": choices.TASKS,
    "model.activation": choices.ACTIVATIONS,
    "model.dtype": choices.DTYPES,
    "model.attention_impl": choices.ATTENTION_IMPLS,
    "model.remat_policy": choices.REMAT_POLICIES,
    "optim.mu_dtype": choices.MU_DTYPES,
    "model.image.pool_type": choices.IMAGE_POOL_TYPES,
    "model.text.pool_type": choices.TEXT_POOL_TYPES,
    "data.source": choices.SOURCES,
    "data.text_reduction": TEXT_REDUCTIONS,
    "data.clusters.modality": choices.CLUSTER_MODALITIES,
    "optim.name": choices.OPTIMIZERS,
    "model.projection": choices.PROJECTIONS,
    "eval.templates": tuple(TEMPLATE_SETS) + (PER_DATASET,),
    "checkpoint.best_mode": choices.BEST_MODES,
    "data.read_mode": choices.READ_MODES,
    "log.wandb.mode": choices.WANDB_MODES,
    "optim.weight_decay_policy": WEIGHT_DECAY_POLICIES,
    "optim.lr_schedule": choices.LR_SCHEDULES,
    "model.text.tokenizer": choices.TOKENIZERS,
    "model.image.tower": choices.IMAGE_TOWERS,
    "model.image.resnet_depth": choices.RESNET_DEPTHS,
}


# key -> old names that still work
ALIASES = {"data.source": choices.SOURCE_ALIASES}


def check_choices(config) -> None:
    for key, names in CHOICES.items():
        value = get(config, key)
        if value not in names and value not in ALIASES.get(key, {}):
            fail(key, value, "is not a valid choice",
                 f"set --config.{key} to one of {', '.join(map(str, names))}")


def at_least(config, key: str, low) -> None:
    value = get(config, key)
    if value < low:
        fail(key, value, f"must be >= {low}", f"set --config.{key} to {low} or more")


def check_relations(config, training: bool = True) -> None:
    check_schedule(config)
    check_batch(config)
    check_mesh(config.mesh)
    check_model(config)
    check_data(config, training)
    check_clips(config)
    check_classify(config)
    check_subset(config)
    check_recipes(config, fail)
    for key in ("eval.every_steps", "checkpoint.every_steps", "log.every_steps"):
        at_least(config, key, 0)  # 0 turns it off
    at_least(config, "checkpoint.keep", 1)
    at_least(config, "log.peak_tflops", 0.0)  # 0 = no mfu
    at_least(config, "eval.batch_size", 1)
    at_least(config, "resume.stale_lock_minutes", 1)  # the heartbeat comes every few seconds
    at_least(config, "profile_steps", 0)
    check_compile(config)
    check_eval(config)


def check_schedule(config) -> None:
    at_least(config, "total_steps", 0)
    at_least(config, "warmup_steps", 0)
    if not config.lr > 0:  # a negative rate is gradient ascent: it trains, to nonsense
        fail("lr", config.lr, "must be > 0", "set --config.lr to a positive learning rate")
    at_least(config, "weight_decay", 0.0)
    total, warmup = config.total_steps, config.warmup_steps
    # the cosine decay after the warmup needs at least one step (train/optimizer.py)
    if warmup >= total and not warmup == total == 0:
        fail("warmup_steps", warmup, f"must be < total_steps={total}",
             "lower --config.warmup_steps or raise --config.total_steps")


def check_batch(config) -> None:
    at_least(config, "batch_size", 1)
    at_least(config, "train.grad_accum_steps", 1)
    batch, accum = config.batch_size, config.train.grad_accum_steps
    if batch % accum:
        fail("batch_size", batch, f"is not divisible by train.grad_accum_steps={accum}",
             "make --config.batch_size a multiple of --config.train.grad_accum_steps")


def check_mesh(mesh) -> None:
    """What can be checked without devices: each size positive, or -1 (fill) at most once."""
    sizes = {axis: mesh[axis] for axis in MESH_AXES}
    for axis, size in sizes.items():
        if size != -1 and size < 1:
            fail(f"mesh.{axis}", size, "must be a positive device count or -1 (all remaining)",
                 f"set --config.mesh.{axis} to a positive int or -1")
    fills = [axis for axis, size in sizes.items() if size == -1]
    if len(fills) > 1:
        fail(f"mesh.{fills[1]}", -1, f"is the second -1 (mesh.{fills[0]} is -1 too): only one "
             "axis can take the remaining devices", f"set --config.mesh.{fills[1]} to a "
             "positive int")
    for key in ("dcn_data", "dcn_fsdp"):
        if mesh[key] < 1:
            fail(f"mesh.{key}", mesh[key], "must be >= 1 (slices or nodes the axis spans)",
                 f"set --config.mesh.{key} to 1 (one slice) or the number of slices")
    for logical, mesh_axis in mesh.rules:
        axes = mesh_axis if isinstance(mesh_axis, (tuple, list)) else (mesh_axis,)
        for axis in axes:
            if axis is not None and axis not in MESH_AXES:
                fail("mesh.rules", f"{logical}->{axis}", "names no mesh axis",
                     f"map {logical!r} to one of {', '.join(MESH_AXES)} or None")


def check_compile(config) -> None:
    at_least(config, "compile.num_slices", 1)
    at_least(config, "compile.max_batch", 0)  # 0 = no search
    if config.compile.target:
        try:
            targets.parse(config.compile.target, config.compile.num_slices)
        except targets.BadTarget as bad:
            fail("compile.target", config.compile.target, f"is not a compile target ({bad})",
                 f"set --config.compile.target to e.g. {targets.EXAMPLES}")


def check_model(config) -> None:
    m = config.model
    resnet = check_resnet(config)
    image_size, patch = config.data.image_size, m.image.patch_size
    at_least(config, "model.image.patch_size", 1)
    if image_size % patch and not resnet:
        fail("data.image_size", image_size, f"is not divisible by model.image.patch_size={patch}",
             "make --config.data.image_size a multiple of the patch size")
    for tower in ("text",) if resnet else ("image", "text"):
        width, heads = m[tower].width, m[tower].heads
        at_least(config, f"model.{tower}.heads", 1)
        if width % heads:
            fail(f"model.{tower}.width", width, f"is not divisible by model.{tower}.heads={heads}",
                 f"make --config.model.{tower}.width a multiple of the head count")
        at_least(config, f"model.{tower}.depth", 1)
    at_least(config, "model.embed_dim", 1)
    at_least(config, "model.text.context_length", 3)  # SOT, EOT and one token
    check_tower_options(m)
    if not m.logit_scale_min <= m.logit_scale_max:
        fail("model.logit_scale_min", m.logit_scale_min,
             f"must be <= model.logit_scale_max={m.logit_scale_max}",
             "lower --config.model.logit_scale_min (CLIP: 0; SimCLIP: -ln 100)")
    if m.text.tokenizer == "clips_wordpiece":
        if not m.text.vocab_path:
            fail("model.text.vocab_path", m.text.vocab_path, "is empty but "
                 "model.text.tokenizer='clips_wordpiece' needs a WordPiece vocab.txt",
                 "set --config.model.text.vocab_path to a bert-base-uncased style vocab.txt")
        at_least(config, "model.text.context_length", 4)  # bos, eos, [CLS] and one token
        if choices.canonical_source(config.data.source) == "shapes":
            fail("model.text.tokenizer", m.text.tokenizer, "does not apply to data.source="
                 f"{config.data.source!r} (the shapes data carries its own word ids)",
                 "set --config.model.text.tokenizer=openclip_bpe or use data.source=tfrecord")


def check_resnet(config) -> bool:
    """The ResNet image tower's keys and what it cannot do; True if the image tower is one."""
    if config.model.image.tower != "resnet":
        return False
    at_least(config, "model.image.resnet_width", 1)
    clips = "model.captioner.enabled" if config.model.captioner.enabled else (
        "loss.two_captions" if config.loss.two_captions else None)
    if clips:  # models/two_tower.py clips_outputs: the ViT's output tokens
        fail(clips, True, "needs the ViT's image tokens; model.image.tower='resnet' has none",
             "set --config.model.image.tower=vit or turn the CLIPS options off")
    if config.log.peak_tflops:
        fail("log.peak_tflops", config.log.peak_tflops, "needs the model FLOPs, which "
             "model_flops.py counts for the ViT image tower only",
             "set --config.log.peak_tflops=0 with model.image.tower='resnet'")
    return True


def check_tower_options(m) -> None:
    """Each tower's LayerNorm eps and activation: its own key, or the shared one if unset."""
    for tower in TOWERS:
        act = tower_option(m, tower, "activation")
        if act not in choices.ACTIVATIONS:
            key = tower_key(m, tower, "activation")
            fail(key, act, "is not a valid choice",
                 f"set --config.{key} to one of {', '.join(choices.ACTIVATIONS)}")
        eps = tower_option(m, tower, "layernorm_eps")
        if not eps > 0:
            key = tower_key(m, tower, "layernorm_eps")
            fail(key, eps, "must be > 0", f"set --config.{key} to e.g. 1e-6 (timm, Flax) or "
                 "1e-5 (PyTorch)")


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


def is_remote(path: str) -> bool:
    # gs://... cannot be listed offline or without credentials; the reader reports those
    return "://" in path


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


def check_clips(config) -> None:
    """CLIPS's keys: the partial-caption budget, the two captions and the captioner."""
    d, m = config.data, config.model
    at_least(config, "data.partial_caption_tokens", 0)
    keep = m.text.context_length - 2
    if d.partial_caption_tokens > keep:
        fail("data.partial_caption_tokens", d.partial_caption_tokens,
             f"exceeds the text context's {keep} caption tokens (model.text.context_length="
             f"{m.text.context_length} less SOT and EOT)", "lower it or raise the context length")
    roles = config.loss.two_captions or m.captioner.enabled
    source = choices.canonical_source(d.source)
    if (roles or d.partial_caption_tokens) and source != "tfrecord":
        key = "data.partial_caption_tokens" if not roles else (
            "loss.two_captions" if config.loss.two_captions else "model.captioner.enabled")
        fail(key, get(config, key), f"needs data.source='tfrecord' (data.source={d.source!r} "
             "has one short caption per image)", "set --config.data.source=tfrecord")
    if roles and config.train.grad_accum_steps != 1:
        fail("train.grad_accum_steps", config.train.grad_accum_steps,
             "must be 1 with loss.two_captions or model.captioner.enabled (not supported yet)",
             "set --config.train.grad_accum_steps=1")
    at_least(config, "loss.caption_weight", 0.0)
    at_least(config, "loss.contrastive_weight", 0.0)
    if not m.captioner.enabled:
        return
    if m.text.tokenizer == "openclip_bpe" and m.text.vocab_size < BPE_VOCAB_SIZE:
        # the captioner predicts the tokenizer's ids, its end id (BPE: 49407) included
        fail("model.text.vocab_size", m.text.vocab_size, "cannot hold the OpenAI BPE ids the "
             f"captioner predicts (end id {BPE_VOCAB_SIZE - 1})",
             f"set --config.model.text.vocab_size={BPE_VOCAB_SIZE} or use "
             "model.text.tokenizer=clips_wordpiece with a small vocab.txt")
    for key in ("width", "depth", "heads", "num_queries"):
        at_least(config, f"model.captioner.{key}", 1)
    if m.captioner.width % m.captioner.heads:
        fail("model.captioner.width", m.captioner.width, "is not divisible by "
             f"model.captioner.heads={m.captioner.heads}", "make it a multiple of the head count")


def check_subset(config) -> None:
    """data.subset_records (data/pipeline.py): the first N of a fixed order of the records."""
    d = config.data
    at_least(config, "data.subset_records", 0)
    if d.subset_records and (d.batch_order or d.read_mode != "random"
                             or d.source != "tfrecord" or mixture_spec.parse(d.train)):
        fail("data.subset_records", d.subset_records, "needs data.source='tfrecord' with one "
             "glob, data.read_mode='random' and no data.batch_order",
             "set --config.data.subset_records=0 or drop the other option")


def check_classify(config) -> None:
    """train.task='classify' (models/classifier.py): no text tower, so no contrastive-only
    option or evaluation; eval.classify needs the classifier."""
    if config.train.task != "classify":
        if config.eval.classify:
            fail("eval.classify", config.eval.classify, "needs train.task='classify'",
                 "set --config.train.task=classify, or eval.classify='' (off)")
        return
    at_least(config, "model.num_classes", 2)
    if config.loss.name != "softmax":
        fail("loss.name", config.loss.name, "is a contrastive loss; train.task='classify' uses "
             "softmax cross-entropy", "set --config.loss.name=softmax")
    off = ("eval.zeroshot", "eval.retrieval", "eval.linear_probe", "data.batch_order")
    for key in off:
        if get(config, key):
            fail(key, get(config, key), "needs the text tower, which train.task='classify' "
                 "has not", f"set --config.{key}='' or use eval.classify")
    for key in ("model.captioner.enabled", "data.clusters.enabled", "loss.two_captions",
                "loss.softmax_bias", "train.lock_text"):
        if get(config, key):
            fail(key, True, "is a contrastive-training option", f"set --config.{key}=False "
                 "with train.task='classify'")
    if config.model.projection != "linear":
        fail("model.projection", config.model.projection, "is a contrastive head",
             "set --config.model.projection=linear (the class head is linear)")


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
