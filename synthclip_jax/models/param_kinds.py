"""What kind of parameter each tensor is, and which kinds each weight-decay policy decays.

Every `nnx.Param` of the towers declares its kind where it is created (`layers.normal_param` /
`layers.const_param` require it), and the optimizer's decay mask is derived from the kinds, so a
new parameter cannot be decayed, or spared, by an accident of its name.

No imports: the config validator reads the policy names without loading jax.
"""

PARAM_KINDS = (
    "weight",  # matrices and lookup tables: linear/conv kernels, projections, token embedding
    "bias",  # additive biases of linear layers
    "norm",  # LayerNorm scale and bias
    "embedding",  # learned vectors added to the sequence: positional embeddings, class token
    "scalar",  # the contrastive loss's logit scale (temperature) and logit bias
)

# optim.weight_decay_policy -> the kinds it decays.
DECAYED_KINDS = {
    # OpenCLIP-style exclusions (this codebase's behaviour before the policy existed).
    "openclip": frozenset({"weight"}),
    # SynthCLIP decays params with ndim >= 2 whose names hold none of bias/ln/bn: timm's
    # pos_embed and cls_token (both ndim 3) are decayed, logit_scale is not.
    "synthclip": frozenset({"weight", "embedding"}),
    # SimCLIP: torch Adam(weight_decay=wd) over every parameter.
    "all": frozenset(PARAM_KINDS),
}
WEIGHT_DECAY_POLICIES = tuple(DECAYED_KINDS)
