"""What one entry of `train.stages` changes in the run's config (jax-free: config_check applies
the same function to check every stage's values as the run's own). train/stages.py plans the
run with it.

  image_size              data.image_size
  patch_dropout           model.image.patch_dropout
  lr_scale                lr (the whole-run schedule times this factor)
  context_length          data.train_context_length: training text rows this long; the text
                          tower reads the first N of its position embeddings (CLIPA), so the
                          parameters keep model.text.context_length's shape in every stage
  partial_caption_tokens  data.partial_caption_tokens
  batch_size              batch_size (the input pipeline continues from the examples consumed)
"""
import copy

STAGE_KEYS = ("steps", "fraction", "image_size", "patch_dropout", "lr_scale", "context_length",
              "partial_caption_tokens", "batch_size")


def stage_config(config, spec: dict):
    """The run's config with the values `spec` names."""
    c = copy.deepcopy(config)
    c.data.image_size = spec.get("image_size", config.data.image_size)
    c.model.image.patch_dropout = spec.get("patch_dropout", config.model.image.patch_dropout)
    c.lr = config.lr * spec.get("lr_scale", 1.0)
    if "context_length" in spec:
        c.data.train_context_length = spec["context_length"]
    c.data.partial_caption_tokens = spec.get("partial_caption_tokens",
                                             config.data.partial_caption_tokens)
    c.batch_size = spec.get("batch_size", config.batch_size)
    return c


def train_text_length(config) -> int:
    """The length of the training text rows (data.train_context_length, 0 = the model's
    context); .get: configs from before the key."""
    return config.data.get("train_context_length", 0) or config.model.text.context_length
