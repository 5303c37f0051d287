"""transformers `CLIPModel` directory (save_pretrained layout) -> ours.

The tensors are renamed into OpenCLIP's layout by inverting the exporter's tables
(`hf.HF_RENAMES`, `hf.HF_BLOCK_RENAMES`; q/k/v_proj are concatenated into in_proj, the
projections transposed back), then loaded by `fit.to_params`; error messages name the HF keys.
`model_config` reads the directory's `config.json` (and `preprocessor_config.json` if present)
into our config: the inverse of `hf.hf_config`.
"""
import os
import re

import numpy as np

from synthclip_jax.data.tokenizer import EOT_ID
from synthclip_jax.export.hf import HF_BLOCK_RENAMES, HF_RENAMES
from synthclip_jax.run import files
from synthclip_jax.export.torch_files import WeightsError, read_weights

ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "quick_gelu": "quick_gelu"}
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
LEGACY_EOS = 2  # transformers pools with argmax when eos_token_id == 2 (the original configs)
TOWERS = (("vision_model", "visual.transformer", "vision_config"),
          ("text_model", "transformer", "text_config"))


def read_json(path):
    return files.read_json(path, "it should be the config.json transformers' save_pretrained "
                                 "writes; re-save or re-download the model")


def model_config(directory, config):
    """`config` with model.* and data.* set from a CLIPModel's config.json."""
    path = os.path.join(directory, "config.json")
    hf = read_json(path)
    if hf.get("model_type") != "clip":
        raise WeightsError(f"{path}: model_type={hf.get('model_type')!r}, not 'clip' (CLIPModel)")
    v, t = hf["vision_config"], hf["text_config"]
    forms = []
    for name, sub in (("vision_config", v), ("text_config", t)):
        act = sub.get("hidden_act", "quick_gelu")
        if act not in ACTIVATIONS:
            raise WeightsError(f"{path}: {name}.hidden_act={act!r}; supported: "
                               f"{sorted(ACTIVATIONS)}")
        forms.append((float(sub.get("layer_norm_eps", 1e-5)), ACTIVATIONS[act]))
    eos = t.get("eos_token_id", LEGACY_EOS)
    if eos not in (LEGACY_EOS, EOT_ID):
        # CLIPModel pools at the first eos_token_id; ours at the largest id (EOT 49407).
        raise WeightsError(f"{path}: text_config.eos_token_id={eos}: synthclip_jax pools at "
                           f"the OpenAI BPE end-of-text token {EOT_ID} (argmax)")
    m = config.model
    m.embed_dim = int(hf.get("projection_dim", 512))
    m.layernorm_eps, m.activation = forms[1]
    if forms[0] != forms[1]:  # per-tower keys only where the towers differ
        m.image.layernorm_eps, m.image.activation = forms[0]
    for group, sub in (("image", v), ("text", t)):
        width, mlp = sub["hidden_size"], sub["intermediate_size"]
        m[group].update(width=width, depth=sub["num_hidden_layers"],
                        heads=sub["num_attention_heads"], mlp_ratio=mlp / width)
    m.image.update(patch_size=v["patch_size"], pool_type="tok", ln_pre=True)
    m.text.update(context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"],
                  causal=True, pool_type="argmax")
    m.logit_scale_init = float(hf.get("logit_scale_init_value", m.logit_scale_init))
    config.data.image_size = int(v["image_size"])
    pre_path = os.path.join(directory, "preprocessor_config.json")
    if os.path.isfile(pre_path):
        pre = read_json(pre_path)
        if "image_mean" in pre and "image_std" in pre:
            config.data.mean, config.data.std = tuple(pre["image_mean"]), tuple(pre["image_std"])
    return config


def read_tensors(directory) -> dict:
    """The CLIPModel's tensors: one weights file, or the shards an `*.index.json` lists."""
    for name in WEIGHT_NAMES:
        index = os.path.join(directory, name + ".index.json")
        if os.path.isfile(index):
            tensors = {}
            for shard in sorted(set(read_json(index)["weight_map"].values())):
                tensors.update(read_weights(os.path.join(directory, shard))[0])
            return tensors
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return read_weights(path)[0]
    raise WeightsError(f"{directory}: none of {list(WEIGHT_NAMES)} (or their .index.json) found")


def to_openclip(tensors: dict) -> tuple:
    """(OpenCLIP-layout tensors, {OpenCLIP key: HF key} for messages) of CLIPModel tensors.

    Keys that match no rule are passed through unchanged, so `fit.to_params` reports them.
    `position_ids` are index buffers (older transformers saved them), not weights: dropped.
    """
    hf = {k: v for k, v in tensors.items() if not k.endswith("embeddings.position_ids")}
    out, names = {}, {}

    def put(oc, h, value):
        out[oc], names[oc] = value, h

    for oc, h in HF_RENAMES.items():
        if h in hf:
            put(oc, h, hf.pop(h))
    for h, oc in (("visual_projection.weight", "visual.proj"),
                  ("text_projection.weight", "text_projection")):
        if h in hf:
            put(oc, h, hf.pop(h).T)  # nn.Linear (E, D) -> x @ W (D, E)
    for hf_prefix, oc_prefix, _ in TOWERS:
        pattern = re.compile(re.escape(hf_prefix) + r"\.encoder\.layers\.(\d+)\.")
        for i in sorted({int(m.group(1)) for k in hf if (m := pattern.match(k))}):
            src, dst = f"{hf_prefix}.encoder.layers.{i}.", f"{oc_prefix}.resblocks.{i}."
            for p, oc in (("weight", "attn.in_proj_weight"), ("bias", "attn.in_proj_bias")):
                parts = [src + f"self_attn.{n}.{p}" for n in ("q_proj", "k_proj", "v_proj")]
                if all(k in hf for k in parts):
                    put(dst + oc, src + f"self_attn.(q|k|v)_proj.{p}",
                        np.concatenate([hf.pop(k) for k in parts]))
            for a, h in HF_BLOCK_RENAMES:
                for p in ("weight", "bias"):
                    if src + f"{h}.{p}" in hf:
                        put(f"{dst}{a}.{p}", src + f"{h}.{p}", hf.pop(src + f"{h}.{p}"))
    for h, value in hf.items():  # unmatched: reported as extra by fit.to_params
        put(h, h, value)
    return out, names
