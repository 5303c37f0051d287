"""CLIPS's ViT-L/14 encoders (`ViT-L-14-CLIPS-224` of UCSC-VLAA/CLIPS), as a contrastive run.

The model is the released architecture exactly (REFERENCE 4.1):
- image: ViT-L/14 (width 1024, 24 layers, 16 heads), class token prepended but no ln_pre,
  mean pooling over the patch tokens, ln_post after the pooling, LayerNorm eps 1e-6, exact GELU;
- text: width 768, 12 heads, 12 layers, context 80, vocab 32000, bidirectional (no causal and no
  padding mask), last-token pooling (the [CLS] the tokenizer puts last), tanh GELU, eps 1e-6;
- tokenizer: CLIPS's layout on bert-base-uncased's WordPiece vocab.txt ([1] + ids + [2], zero
  padding, [CLS]=101 last); point `model.text.vocab_path` at a local copy (nothing is downloaded);
- embed dim 768; ImageNet mean/std.

The recipe is stock OpenCLIP's, which CLIPS trains with: AdamW (0.9, 0.98, eps 1e-6), weight
decay 0.2 on weights only, cosine schedule with linear warmup, logit scale clamped to [0, ln 100].
CLIPS's partial synthetic captions: `data.text_reduction=subcaption` (the paper's best strategy).

Where we differ or had to choose:
- Batch size, steps and lr are not in the CLIPS code (paper only); the values below are
  placeholders of CLIPA's scale, to be set per run.
- The CLIPA-style schedule (`train.stages`, train/stages.py): pre-training at low resolution
  with short text and a large batch, then a short unmasked stage at 224 px with the whole
  context and a smaller batch. CLIPA's (UCSC-VLAA/CLIPA clipa_jax/configs/model_h:
  84_8_pre_training.py, unmask_tuning*.py; CLIPA-v2, arXiv 2306.15658): 84 px, 8-token text
  rows and batch 65536 in pre-training (12.8B samples); 224 px, 32 tokens and batch 16384 in
  fine-tuning (512M samples, ~4% of all). Here: 84 px, `context_length=8` (CLIPA's row length;
  with CLIPS's layout 5 caption tokens between bos, eos and the [CLS] slot) and the base batch
  in stage 1; the whole 80-token context and half the batch (CLIPA's ratio is a quarter) in
  stage 2, 7% of the steps = 3.6% of the samples. Chosen here: patch dropout 0.5 in the 84 px
  stage (FLIP's 50%; CLIPA's 84 px H/14 run masks nothing, its smaller models do), one cosine
  schedule over the whole run instead of CLIPA's separate fine-tuning schedule (lr_scale 1:
  the cosine is already at ~1% of its peak when stage 2 starts), and no 336 px stage. The
  short text reads the first 8 of the 80 text position embeddings (OpenCLIP's
  `positional_embedding[:seq_len]`), so stage 2 and evaluation use the same table.
- CLIPS's contrastive loss averages two caption sets (web + partial synthetic) and adds an
  autoregressive captioner; this config trains the encoders with the plain contrastive loss on
  one caption per image (`configs/clips_cpu.py` is the captioner recipe).
- CLIPS's tokenizer truncates at its fixed 80 - 3 tokens whatever the context; ours at
  context - 3 (the same at 80).
- Preprocessing: CLIPS resizes by squashing (no crop) with bilinear interpolation; our
  evaluation center-crops.
- OpenCLIP export is refused (`model.text.tokenizer`): OpenCLIP 3.3 has no tokenizer writing
  this layout.

  python -m synthclip_jax.main --config=configs/clips_vitl14.py --workdir=gs://BUCKET/run \
      --config.data.train='gs://BUCKET/recap/*.tfrecord' --config.model.text.vocab_path=vocab.txt
"""
from synthclip_jax.config.base import IMAGENET_MEAN, IMAGENET_STD, base
from synthclip_jax.models.sizes import vit_size


def get_config():
    c = base()
    c.batch_size = 32768
    c.total_steps = 100_000
    c.warmup_steps = 2_000
    c.lr = 1e-3
    c.weight_decay = 0.2
    c.model.embed_dim = 768
    c.model.layernorm_eps = 1e-6  # both towers (Flax's default, which CLIPS trained with)
    c.model.image.update(vit_size("L/14"), ln_pre=False, pool_type="avg",
                         final_ln_after_pool=True, activation="gelu")
    c.model.text.update(width=768, heads=12, depth=12, context_length=80, vocab_size=32000,
                        causal=False, pool_type="last", activation="gelu_tanh",
                        tokenizer="clips_wordpiece", vocab_path="/data/clips/vocab.txt")
    c.model.dtype = "bfloat16"
    # Save only the weight matmuls' outputs (MaxText's dots_with_no_batch_dims_saveable), not
    # full remat: at 512 per v5p chip it fits both stages (224 px: 90.5 of 95 GiB; 84 px: 19)
    # for +0.5-2% FLOPs instead of full remat's +23%; XLA estimates 8% (84 px) and 13% (224 px)
    # faster steps (tools/bench/RESULTS.md, issue 28). Smaller chips: remat_policy="full".
    c.model.remat_policy = "dots"
    c.data.source = "tfrecord"
    c.data.train = "/data/recap_datacomp/*.tfrecord"
    c.data.text_reduction = "subcaption"
    c.data.image_size = 224
    c.data.mean, c.data.std = IMAGENET_MEAN, IMAGENET_STD
    c.data.num_workers = 8
    c.mesh.fsdp = -1
    c.mesh.data = 1
    # CLIPA-style: 84 px, half the patches dropped, 8-token text; then unmasked 224 px
    # (= data.image_size), the whole context, half the batch
    c.train.stages = (dict(fraction=0.93, image_size=84, patch_dropout=0.5, context_length=8),
                      dict(fraction=0.07, batch_size=16384))
    c.checkpoint.every_steps = 2000
    c.log.every_steps = 100
    return c
