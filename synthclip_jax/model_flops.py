"""Model FLOPs of a CLIP train step, analytically: the numerator of MFU (`log.peak_tflops`).

Only matmuls are counted (the usual MFU convention): per matmul 2*M*N*K forward, x3 for forward
+ backward (the backward does two matmuls of the same size per forward matmul, one for the
input gradient and one for the weight gradient). Counted per tower: the patch embedding (image),
q/k/v, attention QK^T and AV (the full S x S square, also for the causal text tower: neither
XLA's nor PyTorch's CPU attention skips the masked half), the output projection, both MLP
matmuls and the final projection; plus the two B x B logit matmuls of the loss. LayerNorm,
softmax, activations, the optimizer, the embedding lookup, recomputation (`model.remat`,
whole-batch negatives under gradient accumulation) and the CLIPS caption decoder are not
counted, so MFU is a lower bound where those run.

Why not XLA's cost analysis of the compiled step: it counts a scanned layer stack's loop body
once, not once per layer (the towers scan their layers), and compiling a second time for it
would double the start-up; tests/test_mfu.py checks this count against it on one-layer towers.
"""
from synthclip_jax.config.recipe_check import kept_patches



def tower_forward_flops(batch: int, seq: int, width: int, depth: int, mlp_dim: int,
                        embed_dim: int) -> int:
    per_layer = (2 * seq * width * 3 * width  # q, k, v
                 + 2 * seq * seq * width  # QK^T (all heads together: heads x head_dim = width)
                 + 2 * seq * seq * width  # attention-weighted V
                 + 2 * seq * width * width  # output projection
                 + 2 * 2 * seq * width * mlp_dim)  # c_fc and c_proj
    return batch * (depth * per_layer + 2 * width * embed_dim)  # + the (pooled) projection


def clip_step_flops(*, batch: int, image_size: int, patch: int, vit_width: int, vit_depth: int,
                    text_width: int, text_depth: int, context: int, embed_dim: int,
                    mlp_ratio: float = 4.0, text_mlp_ratio: "float | None" = None,
                    kept_patches: "int | None" = None) -> dict:
    """-> {'image', 'text', 'loss', 'forward', 'step'} FLOPs (step = 3 x forward).
    `kept_patches`: the patches the transformer sees under patch dropout (default: all)."""
    patches = (image_size // patch) ** 2
    kept = patches if kept_patches is None else kept_patches
    image = (2 * batch * patches * patch * patch * 3 * vit_width
             + tower_forward_flops(batch, kept + 1, vit_width, vit_depth,
                                   int(vit_width * mlp_ratio), embed_dim))
    text_mlp_ratio = mlp_ratio if text_mlp_ratio is None else text_mlp_ratio
    text = tower_forward_flops(batch, context, text_width, text_depth,
                               int(text_width * text_mlp_ratio), embed_dim)
    loss = 2 * 2 * batch * batch * embed_dim
    forward = image + text + loss
    return dict(image=image, text=text, loss=loss, forward=forward, step=3 * forward)


def step_flops(config) -> int:
    """Model FLOPs of one train step of `config` (its global batch; patch dropout counted)."""
    m = config.model
    return clip_step_flops(
        batch=config.batch_size, image_size=config.data.image_size, patch=m.image.patch_size,
        vit_width=m.image.width, vit_depth=m.image.depth, text_width=m.text.width,
        text_depth=m.text.depth, context=config.data.get("train_context_length", 0)
        or m.text.context_length, embed_dim=m.embed_dim,
        mlp_ratio=m.image.mlp_ratio, text_mlp_ratio=m.text.mlp_ratio,
        kept_patches=kept_patches(config))["step"]
