"""The names a config may choose for the model, without importing jax.

`config_check` validates configs against these before any device work; the modules that
build the model map the same names onto their functions and dtypes.
"""

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")  # model.activation
DTYPES = ("float32", "bfloat16", "float16")  # model.dtype (compute dtype)
IMAGE_POOL_TYPES = ("tok", "avg")  # model.image.pool_type
TEXT_POOL_TYPES = ("argmax", "last", "mean")  # model.text.pool_type
