"""The contrastive losses a config may name (`loss.name`), without importing jax, so the
config check at the door can read them; `losses.py` implements each."""

LOSS_NAMES = ("softmax", "sigmoid", "sigmoid_ring")
