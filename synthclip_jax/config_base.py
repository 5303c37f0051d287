"""Every config key with its default. Config files start from `base()` and change what differs,
so `config.json` in a workdir lists the whole experiment. Keys are documented in the README."""
import math

import ml_collections
from ml_collections import config_dict

from synthclip_jax.models.sizes import text_size, vit_size
from synthclip_jax.axis_rules import DEFAULT_RULES


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # global, over all devices and processes
    c.lr = 5e-4
    c.warmup_steps = 100
    c.weight_decay = 0.2

    # weight_decay_policy: which declared parameter kinds are decayed (models/param_kinds.py):
    # "openclip" weights only; "synthclip" also positional/class embeddings; "all" (SimCLIP).
    c.optim = dict(b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0, lr_warmup_init=0.0,
                   lr_end=0.0, max_nonfinite_in_a_row=10, weight_decay_policy="openclip")
    # accum_negatives: "full" = whole-batch contrastive loss (OpenCLIP --accum-freq, one extra
    # forward per micro-batch); "micro" = each micro-batch its own batch of negatives.
    c.train = dict(grad_accum_steps=1, accum_negatives="full")
    c.mesh = dict(data=-1, fsdp=1, tensor=1, rules=DEFAULT_RULES)
    c.loss = dict(name="softmax")

    c.model = dict(
        embed_dim=512,
        layernorm_eps=1e-6,
        activation="gelu",  # gelu (exact) | gelu_tanh | quick_gelu
        dtype="float32",  # compute dtype; params stay float32 (bfloat16 on TPU/GPU)
        remat=False,  # per-layer rematerialisation (jax.checkpoint) for large models
        logit_scale_init=math.log(1 / 0.07),
        logit_bias_init=config_dict.placeholder(float),  # set for the sigmoid losses
        logit_scale_max=math.log(100.0),
        image=dict(**vit_size("B/16"), mlp_ratio=4.0, pool_type="tok", ln_pre=True),
        text=dict(**text_size("B"), mlp_ratio=4.0, context_length=77, vocab_size=49408,
                  causal=True, pool_type="argmax"),
    )
    c.data = dict(
        source="tfrecord",  # tfrecord (data.train shards) | shapes (in memory; old name
        # synthetic_shapes still accepted)
        train="",  # glob of TFRecord shards
        image_size=224,
        rrc_scale=(0.9, 1.0),  # RandomResizedCrop area range (OpenCLIP's default)
        # Captions longer than the text context, in training (tfrecord source): truncate,
        # random, block or subcaption (CLIPS); see synthclip_jax/data/text_reduction.py.
        text_reduction="truncate",
        # A .npy of record indices, batch after batch (tools/similarity_order.py: SimCLIP's
        # similarity-cluster batches); "" = seeded shuffle, epoch after epoch.
        batch_order="",
        mean=CLIP_MEAN,
        std=CLIP_STD,
        num_workers=4,  # Grain worker processes (0 = decode in the training process)
        prefetch_per_worker=2,  # batches each worker prepares ahead
        read_threads=16,  # decoding threads per process (Grain ReadOptions.num_threads)
        read_ahead=64,  # examples decoded ahead per process (bounds host memory)
        # How records are fetched (data/read_modes.py): random (one request per record; local
        # disks) | coalesced | streaming (read_block records per request: object storage).
        read_mode="random",
        read_block=64,  # records per request in coalesced/streaming (~1.6 MB of 25 KB JPEGs)
        read_lanes=16,  # blocks read at a time, interleaved; a multiple of the process count
        skip_corrupt=False,  # False: a bad record stops training with its file and offset
        max_corrupt_fraction=0.001,  # with skip_corrupt: of this process's share of records
        # The shapes demo dataset (data/shapes_demo.py): with data.train empty and num_train > 0,
        # render captioned shapes into WORKDIR/data (train shards, retrieval shards, zero-shot
        # folder of unseen colour/shape pairs). The key keeps its old name ("procedural", not
        # "shapes_demo"): README command lines and scripts override data.procedural.*.
        procedural=dict(num_train=0, num_retrieval=256, zeroshot_per_class=32, image_size=64,
                        seed=0),
    )
    c.eval = dict(
        every_steps=0,  # 0 = never; otherwise every N steps and at the end
        zeroshot="",  # folder of class sub-folders of images (optional classnames.txt)
        templates="openai_imagenet",  # openai_imagenet | synthclip_imagenet | simple | shapes
        retrieval="",  # glob of TFRecord shards, every caption of a record is a query
        batch_size=256,
    )
    c.checkpoint = dict(every_steps=1000, keep=3)
    c.log = dict(
        every_steps=50,
        # Peak TFLOP/s of one device (chip) in the compute dtype, for the `mfu` metric (model
        # FLOPs per second / (peak x devices), model_flops.py); 0 = no mfu. E.g. TPU v4 275,
        # v5e 197, H100 SXM 989 (bf16 dense).
        peak_tflops=0.0,
        # Weights & Biases, optional (`pip install wandb`; imported only when project is set):
        # project "" = off; mode online | offline (files under WORKDIR/wandb, `wandb sync`).
        wandb=dict(project="", mode="online"),
    )
    # Starting in a workdir that already has a run (synthclip_jax/resume_check.py,
    # synthclip_jax/workdir_lock.py): keys allowed to differ from the stored config.json beyond
    # the safe ones (comma-separated keys or groups, e.g. "lr,warmup_steps"), and after how long
    # without a heartbeat another host's workdir lock counts as left by a dead run.
    c.resume = dict(allow_changes="", stale_lock_minutes=15.0)
    return c
