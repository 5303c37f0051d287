"""The old home of the base config, kept for one version so that config files written for 0.3.0
(`from synthclip_jax.config_base import base`) still load. It moved to `synthclip_jax.config.base`
(docs/changes.md lists every moved module)."""
import warnings

from synthclip_jax.config.base import (  # noqa: F401 - the names old config files import
    CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, base, clips, recipes)

warnings.warn("synthclip_jax.config_base moved to synthclip_jax.config.base; the old path goes "
              "in the next version (docs/changes.md)", DeprecationWarning, stacklevel=2)
