"""The classification loss (`train.task='classify'`): softmax cross-entropy of the classifier's
logits against the records' labels, with `loss.label_smoothing` (torch's
`CrossEntropyLoss(label_smoothing=e)`: targets (1 - e) one-hot + e / num_classes), the mean
over the batch. Rows are independent, so gradient accumulation over equal micro-batches
averages to the whole batch's loss exactly (train/step.py uses the 'micro' path).
"""
import jax
import optax

from synthclip_jax.models.classifier import ClassifyOutputs


def make_classify_loss(config):
    smoothing = float(config.loss.label_smoothing)

    def loss_fn(outputs: ClassifyOutputs):
        targets = jax.nn.one_hot(outputs.labels, outputs.logits.shape[-1])
        if smoothing:
            targets = optax.smooth_labels(targets, smoothing)
        return optax.softmax_cross_entropy(outputs.logits, targets).mean()

    return loss_fn
