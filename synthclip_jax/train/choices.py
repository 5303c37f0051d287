"""The names a config may choose for the train step, without importing jax (the config
check at the door reads them; `train/step.py` implements each)."""

# train.accum_negatives: "full" = whole-batch contrastive loss over the micro-batches;
# "micro" = each micro-batch its own batch of negatives.
ACCUM_NEGATIVES = ("full", "micro")
