"""simple-clip's recipe at the seed's scale: ResNet-50 + a DistilBERT-sized text tower, MLP heads
to 256, softmax loss with the learnable logit bias, Adam with coupled L2 decay at lr 1e-4, batch
256, 224 px, 57,800 steps (the README's run: ~8M pairs of yfcc7m + coco + sbu, ImageNet
zero-shot 37.10 top-1).

  python -m synthclip_jax.main --config=configs/simpleclip_r50.py --workdir=gs://BUCKET/run \
      --config.data.train='gs://BUCKET/pairs/*.tfrecord'

From simple-clip (filipbasara0/simple-clip, train.py / clip.py / run_training.py, REFERENCE.md
section 3): torchvision `resnet50` with the classifier replaced by the average pool
(`model.image.tower=resnet`, `resnet_depth=50`: 2048 features); projection heads
Linear(d, d) - ReLU - Linear(d, 256) without biases (`model.projection=mlp`, `embed_dim=256`);
logits exp(t) * cos + b, t = ln 5 and b = 0 learnable and unclamped (`loss.softmax_bias`; the
clamp is set far out of reach); `torch.optim.Adam(lr=1e-4, weight_decay=wd)` over every
parameter (`optim.name=adam_l2`, policy `all`, wd 0 as their README run), torch's default
betas (0.9, 0.999) and eps 1e-8, no gradient clipping; CosineAnnealingLR to 1e-8 without
warmup, stepped per iteration; images resized to 224 with no mean/std normalisation.

Deviations, written down:
- Image tower initialisation: random (torchvision's init), where simple-clip starts from the
  ImageNet-pretrained ResNet-50 (IMAGENET1K_V2); start from them with `python -m tools.import_weights
  --format torchvision --src resnet50.pth --config THIS --out DIR` and `--config.init_from=DIR`
  (or `--config.init_from=resnet50.pth` directly).
- Text tower: ours, bidirectional with mean pooling over the real tokens and DistilBERT's size
  (6 layers, width 768, 12 heads, MLP 3072), randomly initialised, with the OpenAI BPE tokenizer
  (77 tokens), instead of a pretrained `distilbert-base-uncased` with its WordPiece tokenizer
  (100 tokens) and a mean that also averages padding (a DistilBERT port is out of scope).
- Crops: RandomResizedCrop at scale (0.9, 1) where simple-clip squashes the whole image.
- Precision: bfloat16 compute with float32 params (BatchNorm statistics in float32); simple-clip
  runs float16 autocast with a GradScaler.
- The cosine runs over `total_steps`; simple-clip's T_max adds a quarter epoch, so its rate ends
  slightly above 1e-8.
- Training stays in train mode after an evaluation; simple-clip's validate() leaves the model in
  eval mode, so its BatchNorm statistics freeze after the first evaluation (a bug, not kept).
- Zero-shot evaluation (set `eval.zeroshot` and `eval.every_steps`, simple-clip: ImageNet every
  1000 steps): normalised features; simple-clip scores unnormalised projections.
"""
import math

from synthclip_jax.config.base import base


def get_config():
    c = base()
    c.batch_size = 256
    c.total_steps = 57_800
    c.warmup_steps = 0
    c.lr = 1e-4
    c.weight_decay = 0.0
    c.optim.update(name="adam_l2", b1=0.9, b2=0.999, eps=1e-8, weight_decay_policy="all",
                   grad_clip_norm=0.0, lr_warmup_init=0.0, lr_end=1e-8)
    c.model.embed_dim = 256
    c.model.projection = "mlp"
    c.model.image.update(tower="resnet", resnet_depth=50, resnet_width=64)
    c.model.text.update(width=768, depth=6, heads=12, mlp_ratio=4.0, causal=False,
                        pool_type="mean", layernorm_eps=1e-12, activation="gelu")  # DistilBERT's
    c.model.logit_scale_init = math.log(5.0)
    c.model.logit_bias_init = 0.0
    c.model.logit_scale_max = math.log(1e4)  # simple-clip does not clamp
    c.model.logit_scale_min = -math.log(1e4)
    c.loss.softmax_bias = True
    c.model.dtype = "bfloat16"  # params stay float32
    c.data.source = "tfrecord"
    c.data.train = "/data/simpleclip/*.tfrecord"
    c.data.image_size = 224
    c.data.mean, c.data.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    c.data.num_workers = 8
    c.eval.templates = "simple"  # "a photo of a {}." (simple-clip: the same without the period)
    c.checkpoint.every_steps = 1000
    c.log.every_steps = 50
    return c
