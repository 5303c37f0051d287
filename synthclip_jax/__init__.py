"""synthclip_jax: CLIP and SigLIP training on synthetic image-caption data, in JAX."""
