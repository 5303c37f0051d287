"""synthclip_jax: CLIP and SigLIP training on synthetic image-caption data, in JAX."""

# The one place the version lives: pyproject.toml reads it (statically, without importing the
# package), and provenance.json records it. This module stays import-light (no jax): tools
# and the data_gen environments import synthclip_jax helpers without the training stack.
__version__ = "0.3.0"
