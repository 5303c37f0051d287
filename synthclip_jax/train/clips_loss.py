"""CLIPS's training loss: the contrastive loss over one or two caption roles, plus the
captioner's caption loss (REFERENCE.md section 4.3).

  loss.two_captions:       contrastive = 0.5 * (L(img, web) + L(img, partial synthetic))
  otherwise:               contrastive = L(img, web)
  model.captioner.enabled: loss = loss.contrastive_weight * contrastive
                                  + loss.caption_weight * caption cross-entropy
                           (the full synthetic caption, from the image and the web caption)

The batch carries 'image', 'text' (the partial synthetic caption), 'web_text' and, with the
captioner, 'caption' (data/pipeline.py). Both parts are returned for `metrics.jsonl`
(`contrastive_loss`, `caption_loss`).
"""
from synthclip_jax.image_normalize import normalize
from synthclip_jax import losses
from synthclip_jax.data.text_tokenizer import special_ids_of
from synthclip_jax.models.captioner import caption_inputs_and_labels
from synthclip_jax.models.patch_dropout import BATCH_KEY as PATCH_KEEP


def clips_enabled(config) -> bool:
    return bool(config.loss.two_captions or config.model.captioner.enabled)


def make_clips_loss(config, mesh):
    """None for a plain run; else loss_of(model, batch) -> (loss, {part name: value})."""
    if not clips_enabled(config):
        return None
    two, with_captioner = config.loss.two_captions, config.model.captioner.enabled
    pad_id = special_ids_of(config.model.text).pad  # the captioner's targets: data/pipeline.py
    make = losses.make_two_caption_loss if two else losses.make_contrastive_loss
    contrastive_fn = make(config.loss.name, mesh)

    def loss_of(model, batch):
        inputs, labels = (caption_inputs_and_labels(batch["caption"]) if with_captioner
                          else (None, None))
        images = normalize(batch["image"], config.data.mean, config.data.std)  # uint8 pixels
        outputs, logits = model.clips_outputs(images, batch["web_text"], inputs,
                                              patch_keep=batch.get(PATCH_KEEP))
        contrastive = (contrastive_fn(outputs, model.encode_text(batch["text"])) if two
                       else contrastive_fn(outputs))
        parts = {"contrastive_loss": contrastive}
        if not with_captioner:
            return contrastive, parts
        parts["caption_loss"] = losses.caption_loss(logits, labels, pad_id)
        return (config.loss.contrastive_weight * contrastive
                + config.loss.caption_weight * parts["caption_loss"]), parts

    return loss_of
