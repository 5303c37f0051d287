"""The trainer's data source, chosen by `data.source`.

A source is an iterator of host-local batches {'image': uint8 (b, H, W, 3) pixels, which the
train step normalises on the device (image_normalize.py), or float32 already normalised (the
shapes source), 'text': int32 (b, context_length)} with `get_state()` / `set_state(dict)` for exact resume
(the state is saved in every checkpoint). A source may have `stats() -> {name: number}`, e.g.
the count of skipped corrupt records, which the trainer logs with its metrics. A source may
have `prepare(step, params)`, called before every step with the current parameters: SimCLIP's
cluster batches (train/online_clusters.py, `data.clusters`) re-embed the data with them.
"""
import jax

from synthclip_jax.config.error import ConfigError
from synthclip_jax.data import mixture_spec
from synthclip_jax.data.shapes import ShapesSource
from synthclip_jax.config.choices import SOURCES, canonical_source
from synthclip_jax.train.stage_spec import train_text_length


def make_train_source(config):
    name = canonical_source(config.data.source)
    if name == "shapes":
        if config.data.text_reduction != "truncate":
            raise ConfigError("data.text_reduction",
                              f"data.text_reduction={config.data.text_reduction!r} needs "
                              "data.source='tfrecord' (shapes has no captions to cut)")
        if config.loss.two_captions or config.model.captioner.enabled:  # config_check says why
            raise ConfigError("loss.two_captions", "CLIPS (loss.two_captions / "
                              "model.captioner.enabled) needs data.source='tfrecord'")
        return ShapesSource(seed=config.seed, global_batch=config.batch_size,
                            image_size=config.data.image_size,
                            context_length=train_text_length(config),
                            vocab_size=config.model.text.vocab_size,
                            mean=config.data.mean, std=config.data.std,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
    if name == "tfrecord":
        if (mix := mixture_spec.parse(config.data.train)) is not None:  # "GLOB1:0.8,GLOB2:0.2"
            from synthclip_jax.data.mixture import make_mixture_source
            return make_mixture_source(config, mix, jax.process_index(), jax.process_count())
        from synthclip_jax.data.pipeline import make_grain_source  # grain only when used
        return make_grain_source(config, jax.process_index(), jax.process_count())
    raise ConfigError("data.source", f"data.source={config.data.source!r}; choose one of {SOURCES}")
