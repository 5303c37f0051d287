"""The checks of the model keys: tower sizes and heads, LayerNorm eps and activation per tower,
the ResNet image tower, CLIPS (partial captions, two captions, the captioner) and the
classification task. No jax."""
from synthclip_jax.config import choices
from synthclip_jax.config.check_common import at_least, fail, get
from synthclip_jax.data.tokenizer import VOCAB_SIZE as BPE_VOCAB_SIZE
from synthclip_jax.models.tower_config import TOWERS, tower_key, tower_option


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
