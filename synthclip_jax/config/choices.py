"""Every name a config may choose, in one jax-free module.

`config_check.validate` checks a config against these before any device work; the modules
that implement each choice import the names from here, so the lists exist once.
"""

LOSS_NAMES = ("softmax", "sigmoid", "sigmoid_ring")  # loss.name; losses.py
OPTIMIZERS = ("adamw", "adam_l2")  # optim.name; train/optimizer.py
PROJECTIONS = ("linear", "mlp")  # model.projection; models/two_tower.py
# train.accum_negatives: "full" = whole-batch contrastive loss over the micro-batches;
# "micro" = each micro-batch its own batch of negatives (train/step.py).
ACCUM_NEGATIVES = ("full", "micro")
TASKS = ("contrastive", "classify")  # train.task; models/classifier.py, train/classify_loss.py

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")  # model.activation; models/layers.py
DTYPES = ("float32", "bfloat16", "float16")  # model.dtype (compute dtype); models/two_tower.py
# model.attention_impl: jax.nn.dot_product_attention's implementation (auto: JAX picks cuDNN
# where it applies, else XLA); models/layers.py
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
REMAT_POLICIES = ("auto", "none", "dots", "full")  # model.remat_policy; models/layers.py
MU_DTYPES = ("float32", "bfloat16")  # optim.mu_dtype (Adam's first moment); train/optimizer.py
IMAGE_POOL_TYPES = ("tok", "avg")  # model.image.pool_type; models/vit.py
IMAGE_TOWERS = ("vit", "resnet")  # model.image.tower; models/two_tower.py
RESNET_DEPTHS = (18, 34, 50, 101, 152)  # model.image.resnet_depth; models/resnet.py
TEXT_POOL_TYPES = ("argmax", "last", "mean")  # model.text.pool_type; models/text.py

SOURCES = ("shapes", "tfrecord")  # data.source; data/source.py
CLUSTER_MODALITIES = ("text", "image")  # data.clusters.modality; evaluate/record_features.py
# Old names still accepted: configs and command lines written before the rename keep working.
SOURCE_ALIASES = {"synthetic_shapes": "shapes"}


WANDB_MODES = ("online", "offline")  # log.wandb.mode; metrics.py

# data.read_mode: how records are fetched from the shards (data/read_modes.py).
READ_MODES = ("random", "coalesced", "streaming")


def canonical_source(name: str) -> str:
    return SOURCE_ALIASES.get(name, name)

TOKENIZERS = ("openclip_bpe", "clips_wordpiece")  # model.text.tokenizer; data/text_tokenizer.py
LR_SCHEDULES = ("cosine", "constant")  # optim.lr_schedule (after warmup); train/optimizer.py
BEST_MODES = ("max", "min")  # checkpoint.best_mode; train/best_checkpoint.py
