"""Every config key with its default. Config files start from `base()` and change what differs,
so `config.json` in a workdir lists the whole experiment. Keys are documented in docs/training.md."""
import math

import ml_collections
from ml_collections import config_dict

from synthclip_jax.models.sizes import text_size, vit_size
from synthclip_jax.config.axis_rules import DEFAULT_RULES


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
    # Fine-tuning: start from these weights (a workdir, e.g. from tools.import_weights, or an
    # OpenCLIP dir / CLIPModel dir / weights file) at step 0 with a fresh optimizer; "" = seeded
    # init. Ignored once the workdir has a checkpoint (the run resumes).
    c.init_from = ""

    # weight_decay_policy: which declared parameter kinds are decayed (models/param_kinds.py):
    # "openclip" weights only; "synthclip" also positional/class embeddings; "all" (SimCLIP).
    # name: adamw (decoupled decay) | adam_l2 (simple-clip's torch Adam(weight_decay=wd): L2
    # decay added to the gradient before the moments).
    c.optim = dict(name="adamw", b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0, lr_warmup_init=0.0,
                   lr_end=0.0, max_nonfinite_in_a_row=10, weight_decay_policy="openclip",
                   # Adam's first moment in bfloat16 halves its memory (big_vision's habit);
                   # the second moment and the parameters stay float32.
                   mu_dtype="float32")
    # After the linear warmup: "cosine" decay to lr_end, or "constant" at lr (SimCLIP's
    # fine-tuning: GradualWarmupScheduler then constant).
    c.optim.lr_schedule = "cosine"
    # accum_negatives: "full" = whole-batch contrastive loss (OpenCLIP --accum-freq, one extra
    # forward per micro-batch); "micro" = each micro-batch its own batch of negatives.
    # task: "contrastive" (the two towers) | "classify" (the image tower + a linear head of
    # model.num_classes classes, softmax cross-entropy with loss.label_smoothing on the
    # records' `label`: the Scaling-laws seed's supervised models; models/classifier.py).
    c.train = dict(grad_accum_steps=1, accum_negatives="full", task="contrastive")
    # dcn_data/dcn_fsdp: how many TPU slices / GPU nodes the data and fsdp axes span (then
    # data/fsdp/tensor shape one slice; sharding.make_mesh); 1 = one slice.
    c.mesh = dict(data=-1, fsdp=1, tensor=1, rules=DEFAULT_RULES, dcn_data=1, dcn_fsdp=1)
    # softmax loss options: label_smoothing as SimCLIP's clip_loss (torch cross_entropy); with
    # softmax_bias the model's logit bias (model.logit_bias_init) is added to the logits, as
    # simple-clip does (a constant shift: it changes neither the loss nor any gradient).
    c.loss = dict(name="softmax", label_smoothing=0.0, softmax_bias=False)

    c.model = dict(
        embed_dim=512,
        num_classes=1000,  # train.task='classify': the head's classes (ImageNet's 1000)
        # linear: one matrix per tower (CLIP); mlp: Linear(d, d) - ReLU - Linear(d, embed_dim),
        # no biases, d the tower width (simple-clip; OpenCLIP export refuses it).
        projection="linear",
        layernorm_eps=1e-6,
        activation="gelu",  # gelu (exact) | gelu_tanh | quick_gelu
        dtype="float32",  # compute dtype; params stay float32 (bfloat16 on TPU/GPU)
        remat=False,  # per-layer rematerialisation (jax.checkpoint) for large models
        # remat_policy: "none" | "dots" (weight matmuls' outputs saved) | "full" | "auto" =
        # model.remat (True: full; False: dots under FSDP, so the gathered weights of every
        # layer are not all kept alive, else none).
        remat_policy="auto",
        # attention_impl: jax.nn.dot_product_attention implementation: "xla" | "cudnn" (GPU,
        # bf16/fp16) | "auto" (cuDNN where it applies, else XLA; the same function either way).
        attention_impl="auto",
        logit_scale_init=math.log(1 / 0.07),
        logit_bias_init=config_dict.placeholder(float),  # set for the sigmoid losses
        logit_scale_max=math.log(100.0),
        logit_scale_min=0.0,  # CLIP clamps the log-scale to [0, max]; SimCLIP to [-ln 100, ..]
        image=dict(**vit_size("B/16"), mlp_ratio=4.0, pool_type="tok", ln_pre=True,
                   # Per-tower eps/activation: unset = the shared model.layernorm_eps /
                   # model.activation (models/tower_config.py); the seeds differ per tower
                   # (SynthCLIP: timm image 1e-6 exact GELU, OpenAI text 1e-5 QuickGELU).
                   layernorm_eps=config_dict.placeholder(float),
                   activation=config_dict.placeholder(str),
                   patch_bias=False,  # bias on the patch conv (timm ViTs have one)
                   final_ln_after_pool=False,  # ln_post after pooling (CLIPA/CLIPS avg pool)
                   # tower: "vit" | "resnet" (torchvision's ResNet-{resnet_depth}, BatchNorm,
                   # average pool: simple-clip; models/resnet.py). The ResNet reads only
                   # resnet_depth and resnet_width (the stem width, torchvision's 64; smaller
                   # for tiny test towers) of the image keys.
                   tower="vit", resnet_depth=50, resnet_width=64),
        text=dict(**text_size("B"), mlp_ratio=4.0, context_length=77, vocab_size=49408,
                  causal=True, pool_type="argmax",
                  layernorm_eps=config_dict.placeholder(float),
                  activation=config_dict.placeholder(str),
                  final_ln_after_pool=False,  # ln_final after pooling (differs only for mean)
                  # openclip_bpe (OpenAI BPE, data/tokenizer.py) | clips_wordpiece (CLIPS's
                  # BERT layout, data/clips_tokenizer.py; needs vocab_path, a WordPiece vocab.txt)
                  tokenizer="openclip_bpe", vocab_path=""),
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
        # Train on the first subset_records records (0 = all) of a fixed order of data.train's
        # records (a permutation seeded by subset_seed, not by the run's seed), so subsets of
        # growing size are nested: the dataset-scale sweeps of tools/scaling_sweep.py.
        subset_records=0,
        subset_seed=0,
        # SimCLIP's similarity-cluster batches built during training (train/online_clusters.py):
        # per batch int(batch_size * p) examples in clusters of `cluster_size` similar ones, each
        # drawn among a pivot's cluster_size * `neighborhood` nearest; p starts at `proportion`
        # and doubles at each of `warmup_epochs` (SimCLIP's default list). The bank (`modality`
        # text | image) is re-embedded with the current model every `every_steps` steps (0 =
        # every epoch) when `online`, else once at the run's first step.
        clusters=dict(enabled=False, online=True, modality="text", proportion=1.0,
                      warmup_epochs=(4, 6, 8, 10, 12, 14, 16, 18), cluster_size=16,
                      neighborhood=1, every_steps=0),
        mean=CLIP_MEAN,
        std=CLIP_STD,
        num_workers=4,  # Grain worker processes (0 = decode in the training process)
        prefetch_per_worker=2,  # batches each worker prepares ahead
        read_threads=16,  # decoding threads per process (Grain ReadOptions.num_threads)
        read_ahead=64,  # examples decoded ahead per process (bounds host memory)
        device_prefetch=2,  # global batches transferred to the devices ahead of the step
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
        # train.task='classify': NAME=SOURCE sets of labelled images (class sub-folders, or
        # records with `label`), top-1/top-5/mean cross-entropy with the Scaling-laws seed's
        # preprocessing (Resize 256, CenterCrop 224 of data.image_size; evaluate/classify.py).
        classify="",
        batch_size=256,
        # zeroshot/retrieval also take several named sets, NAME=SOURCE,NAME2=SOURCE2 (metric
        # keys zeroshot/NAME/top1); SOURCE: folder, TFRecord glob, tfds:NAME[:VER]/SPLIT or a
        # prepared TFDS dataset DIR/SPLIT (evaluate/sources.py).
        linear_probe="",  # NAME=TRAIN_SOURCE,TEST_SOURCE;NAME2=... (CLIP/SLIP linear probe)
        linear_probe_shots=(),  # k-shot probes besides the full one, e.g. (1, 5, 10)
        retrieval_ks=(1, 5, 10),  # Recall@K reported (SimCLIP: 1, 5, 10, 20, 50, 200)
        tfds_data_dir="",  # TFDS data_dir of tfds: sources ("" = TFDS's default); never downloads
    )
    # best_metric: an eval metric key (e.g. "zeroshot/imagenet/top1"): the best step by it is
    # kept besides the latest `keep` (checkpoints/best/); best_mode says whether higher is better.
    c.checkpoint = dict(every_steps=1000, keep=3, best_metric="", best_mode="max")
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
    # Starting in a workdir that already has a run (synthclip_jax/config/resume_check.py,
    # synthclip_jax/run/workdir_lock.py): keys allowed to differ from the stored config.json beyond
    # the safe ones (comma-separated keys or groups, e.g. "lr,warmup_steps"), and after how long
    # without a heartbeat another host's workdir lock counts as left by a dead run.
    # A relative compile_cache_dir lies in the workdir; "" = off (train/profiling.py).
    # profile_steps=N: a jax.profiler trace of N steps into WORKDIR/profile; 0 = off.
    c.compile_cache_dir = ""
    c.profile_steps = 0
    c.resume = dict(allow_changes="", stale_lock_minutes=15.0)
    # --mode=compile (synthclip_jax/aot/): target = a Cloud TPU type (v5e-64) or GPU nodes
    # (h100:1x8); num_slices = TPU slices; out = the report's path ("" = WORKDIR or the
    # current directory /compile_report.json); max_batch > 0 = also search the largest
    # per-device batch up to it that fits.
    # num_records: the dataset's record count, for SimCLIP's neighbour search (data.clusters)
    # over the embedded records; 0 = not compiled.
    c.compile = dict(target="", num_slices=1, out="", max_batch=0, num_records=0)
    clips(c)
    recipes(c)
    return c


def recipes(c) -> None:
    """Training for less (README): patch dropout, weight EMA; checked in recipe_check.py."""
    # FLIP / OpenCLIP patch dropout: the fraction of each image's patch tokens dropped in
    # training (round half up, class token kept); evaluation and export see every patch.
    c.model.image.patch_dropout = 0.0
    # Weight EMA (train/ema.py, timm's ModelEmaV3): decay (0 = off); ema_warmup: timm's warmup
    # d(t) = min(ema_decay, 1 - t^(-2/3)), else ema_decay from the second update.
    c.train.ema_decay = 0.0
    c.train.ema_warmup = True
    # Locked towers (LiT; train/lock.py): only the projection and the last N blocks (ResNet:
    # stages) of a locked tower train; its other parameters get no optimizer state.
    c.train.lock_image = False
    c.train.lock_image_unlocked_layers = 0
    c.train.lock_text = False
    c.train.lock_text_unlocked_layers = 0
    # Training images whose crop is at least twice data.image_size are decoded at reduced size
    # by the JPEG decoder (DCT scaling, PIL draft; data/transforms.py): low-resolution training
    # keeps up with a cheap step. Off by default: the pixels differ slightly from a full decode.
    c.data.jpeg_draft = False
    # Training text rows this long (CLIPA's short text): the text tower reads the first N of
    # its model.text.context_length position embeddings; evaluation and export keep the whole
    # context. 0 = model.text.context_length.
    c.data.train_context_length = 0
    # Stages (train/stages.py; CLIPA): a tuple of dicts, each with its length ("steps" or
    # "fraction" of total_steps) and any of "image_size", "patch_dropout", "lr_scale",
    # "context_length" (data.train_context_length), "partial_caption_tokens", "batch_size";
    # () = one stage, the config as it is.
    c.train.stages = ()


def clips(c) -> None:
    """CLIPS's keys (off by default: a plain run is unchanged); models/captioner.py, README."""
    # Contrast each image with two captions, 0.5 * (L(img, web) + L(img, partial synthetic))
    # (CLIPS); the web caption is the record's `web_caption`, or its `caption` when it has none.
    c.loss.two_captions = False
    # With the captioner: loss = caption_weight * caption CE + contrastive_weight * contrastive
    # (OpenCLIP CoCa's defaults, which CLIPS's create_loss reuses).
    c.loss.caption_weight = 2.0
    c.loss.contrastive_weight = 1.0
    # Keep at most K caption tokens of the training (partial synthetic) caption, through
    # data.text_reduction; 0 = the whole text context. CLIPS's best: K=32 (block/subcaption).
    c.data.partial_caption_tokens = 0
    # The shapes demo data with two caption roles: each record's caption is a long detailed one
    # and its web_caption the short "a red circle" (data/shapes_demo.py).
    c.data.procedural.web_captions = False
    # The CLIPS captioner: image patch tokens + the web caption's text-encoder tokens + learnable
    # queries -> the full synthetic caption. Defaults: OpenCLIP CoCa ViT-B's multimodal decoder
    # (width 512, 12 layers, 8 heads) and CLIPS's 128 queries; see models/captioner.py.
    c.model.captioner = dict(enabled=False, width=512, depth=12, heads=8, mlp_ratio=4.0,
                             num_queries=128)
