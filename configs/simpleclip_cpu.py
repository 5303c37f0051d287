"""simple-clip's recipe at CPU size: a ResNet-18 image tower (BatchNorm, average pool), MLP
projection heads, a mean-pooled bidirectional text tower, the logit bias under the softmax loss,
Adam with coupled L2 decay, 64 px images.

  python -m synthclip_jax.main --config=configs/simpleclip_cpu.py --workdir=/tmp/simpleclip \
      [--config.data.train='shards/*.tfrecord']

From simple-clip (filipbasara0/simple-clip, train.py / clip.py): torchvision's ResNet-18 with
its classifier replaced by the average pool (`model.image.tower=resnet`, `resnet_depth=18`;
simple-clip's `--image_encoder_name resnet18`); projection heads
Linear(d, d) - ReLU - Linear(d, proj) without biases (`model.projection=mlp`); logits
exp(t) * cos + b with t = ln 5, b = 0 learnable (`loss.softmax_bias`; b has zero gradient under
softmax, as there); `torch.optim.Adam(lr=1e-4, weight_decay=wd)` over all parameters
(`optim.name=adam_l2`, policy `all`; their README run uses wd 0); cosine to ~0 without warmup;
images only resized, no mean/std normalisation (mean 0, std 1 here).

Deviations, written down:
- Image tower initialisation: random (torchvision's init), where simple-clip starts from the
  ImageNet-pretrained ResNet-18 (IMAGENET1K_V1); nothing is downloaded here. The architecture is
  torchvision's exactly (tests/test_resnet.py): `python -m tools.import_weights --format
  torchvision --src resnet18.pth --config THIS --out DIR`, then `--config.init_from=DIR`.
- BatchNorm under gradient accumulation: the running statistics move once per step, by the mean
  of the micro-batches' statistics (train/step.py); simple-clip does not accumulate.
- Training stays in train mode after an evaluation; simple-clip's validate() leaves the model
  in eval mode, so its BatchNorm statistics freeze after the first evaluation (a bug, not kept).
- Text tower: ours, bidirectional with mean pooling over the real tokens, instead of a
  pretrained DistilBERT (a port is out of scope); simple-clip's mean also averages padding.
- Crops: RandomResizedCrop with a mild scale range (the shapes captions name positions) where
  simple-clip squashes the whole image; the demo's shapes data when `data.train` is empty.
"""
import math

from configs.demo_cpu import get_config as demo_config


def get_config():
    c = demo_config()
    c.lr = 1e-4 * 10  # simple-clip's 1e-4 at batch 256 is slow for a few CPU minutes
    c.warmup_steps = 0
    c.weight_decay = 0.0
    c.optim.update(name="adam_l2", b1=0.9, b2=0.999, eps=1e-8, weight_decay_policy="all",
                   grad_clip_norm=0.0, lr_warmup_init=0.0, lr_end=1e-8)
    c.model.projection = "mlp"
    c.model.image.update(tower="resnet", resnet_depth=18, resnet_width=64)  # torchvision's
    c.model.text.update(causal=False, pool_type="mean")
    c.model.logit_scale_init = math.log(5.0)
    c.model.logit_bias_init = 0.0
    c.loss.softmax_bias = True
    c.data.image_size = 64
    c.data.procedural.image_size = 72
    c.data.mean, c.data.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return c
