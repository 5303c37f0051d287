"""JAX params -> a transformers `CLIPModel` directory (config.json + model.safetensors, and the
tokenizer and image processor files, so `CLIPProcessor.from_pretrained(dir)` works).

Used by `python -m tools.convert_to_openclip ... --format hf`. The tensors are OpenCLIP's
(`openclip.openclip_state_dict`) renamed and split. CLIPModel is less flexible than OpenCLIP: its
text tower is always causal and pools at the first `eos_token_id` (we set 49407, the OpenAI BPE
EOT, which is where our `argmax` pooling lands); its ViT always has `pre_layrnorm` and pools the
class token (`post_layernorm` on the CLS row only = our ln_post then take row 0); it has no
logit_bias. Anything else is refused rather than exported approximately.

torch and transformers are imported inside the functions that need them, never at module level:
the package is JAX-only, and only an export to transformers needs them. `export_hf` builds the
transformers model and loads our tensors into it with torch, so that a key the model does not
expect (or one it misses) stops the export instead of being written.
"""
import os

import numpy as np

from synthclip_jax.data.tokenizer import EOT_ID, PAD_ID, SOT_ID
from synthclip_jax.export.openclip import (ExportError, check_torch_clip, openclip_state_dict,
                                          refuse)
from synthclip_jax.models.tower_config import tower_option

HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}


def check_hf(config):
    m = config.model
    if m.image.get("tower", "vit") != "vit":
        refuse("model.image.tower", m.image.tower, "CLIPModel's vision tower is a ViT; export "
               "the ResNet with --format openclip (its timm tower)")
    check_torch_clip(config)  # vocab, mean pooling, ... are refused for the same reasons
    if not m.text.causal:
        refuse("model.text.causal", m.text.causal, "CLIPModel's text tower is always causal")
    if m.text.pool_type != "argmax":
        refuse("model.text.pool_type", m.text.pool_type,
               "CLIPModel pools the text at the first EOT token only")
    if m.image.pool_type != "tok":
        refuse("model.image.pool_type", m.image.pool_type, "CLIPModel pools the class token only")
    if not m.image.ln_pre:
        refuse("model.image.ln_pre", m.image.ln_pre, "CLIPModel always applies pre_layrnorm")
    if m.get("logit_bias_init") is not None:
        refuse("model.logit_bias_init", m.logit_bias_init,
               "CLIPModel has no logit_bias (use SiglipModel or --format openclip)")


def hf_config(config):
    from transformers import CLIPConfig
    m = config.model

    def common(tower):  # CLIPTextConfig and CLIPVisionConfig each take their own
        return dict(hidden_act=HF_ACT[tower_option(m, tower, "activation")],
                    layer_norm_eps=float(tower_option(m, tower, "layernorm_eps")),
                    projection_dim=m.embed_dim)
    text = dict(vocab_size=m.text.vocab_size, hidden_size=m.text.width,
                intermediate_size=int(m.text.width * m.text.mlp_ratio),
                num_hidden_layers=m.text.depth, num_attention_heads=m.text.heads,
                max_position_embeddings=m.text.context_length,
                bos_token_id=SOT_ID, eos_token_id=EOT_ID, pad_token_id=PAD_ID, **common("text"))
    vision = dict(hidden_size=m.image.width, intermediate_size=int(m.image.width * m.image.mlp_ratio),
                  num_hidden_layers=m.image.depth, num_attention_heads=m.image.heads,
                  image_size=int(config.data.image_size), patch_size=m.image.patch_size,
                  num_channels=3, **common("image"))
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=m.embed_dim,
                      logit_scale_init_value=float(m.logit_scale_init))


HF_RENAMES = {  # OpenCLIP native-CLIP key -> CLIPModel key (the tensor unchanged)
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # (sic) HF's spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# OpenCLIP block module -> CLIPModel encoder-layer module (weight and bias each, unchanged);
# in_proj is split into q/k/v_proj by `_split_block`.
HF_BLOCK_RENAMES = (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                    ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))


def _split_block(prefix, oc, i, d):
    """OpenCLIP block i -> HF encoder layer i (in_proj packs q;k;v along rows)."""
    src, dst = f"{oc}.resblocks.{i}.", f"{prefix}.encoder.layers.{i}."
    w, b = d.pop(src + "attn.in_proj_weight"), d.pop(src + "attn.in_proj_bias")
    out = {}
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        out[dst + f"self_attn.{name}.weight"] = np.split(w, 3)[j]
        out[dst + f"self_attn.{name}.bias"] = np.split(b, 3)[j]
    for a, h in HF_BLOCK_RENAMES:
        for p in ("weight", "bias"):
            out[f"{dst}{h}.{p}"] = d.pop(f"{src}{a}.{p}")
    return out


def hf_state_dict(config, params):
    d = openclip_state_dict(params)  # native image tower: a patch bias is folded in
    m = config.model
    sd = {}
    for i in range(m.image.depth):
        sd.update(_split_block("vision_model", "visual.transformer", i, d))
    for i in range(m.text.depth):
        sd.update(_split_block("text_model", "transformer", i, d))
    for a, h in HF_RENAMES.items():
        sd[h] = d.pop(a)
    # x @ W (D, E) in ours / OpenCLIP; HF uses nn.Linear(D, E, bias=False), weight (E, D).
    sd["visual_projection.weight"] = d.pop("visual.proj").T
    sd["text_projection.weight"] = d.pop("text_projection").T
    assert not d, f"unmapped: {sorted(d)}"
    return {k: np.array(v, np.float32, order="C") for k, v in sd.items()}


# transformers' CLIPTokenizer names the OpenAI BPE's specials as the original CLIP release did.
HF_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def hf_processor(config):
    """CLIPProcessor: our tokenizer's vocab and merges (same ids) and the eval preprocessing.

    Images: shortest edge to `data.image_size` (bicubic), center crop, `data.mean/std`, as the
    OpenCLIP export's preprocess_cfg. HF pads with <|endoftext|> where we pad with 0; CLIPModel
    pools at the first <|endoftext|>, so the text features are the same.
    """
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer
    from synthclip_jax.data.tokenizer import get_tokenizer
    ours = get_tokenizer()
    vocab = {HF_SPECIALS.get(token, token): i for i, token in enumerate(ours.id_to_token)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(ours.merges),
                              model_max_length=config.model.text.context_length)
    size = int(config.data.image_size)
    images = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, resample=3,  # PIL bicubic
        do_center_crop=True, crop_size={"height": size, "width": size}, do_rescale=True,
        do_normalize=True, image_mean=[float(x) for x in config.data.mean],
        image_std=[float(x) for x in config.data.std], do_convert_rgb=True)
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def export_hf(config, params, out_dir):
    check_hf(config)
    import torch  # transformers builds and saves the model with torch; see the module docstring
    from transformers import CLIPModel
    sd = {k: torch.tensor(v) for k, v in hf_state_dict(config, params).items()}  # copies
    model = CLIPModel(hf_config(config)).float()
    # strict: every HF parameter must come from us (position_ids buffers are non-persistent).
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ExportError(f"HF CLIPModel key mismatch: missing {missing}, unexpected {unexpected}")
    os.makedirs(out_dir, exist_ok=True)
    # safetensors is the default since transformers 4.35 and the only format in 5.x.
    model.save_pretrained(out_dir)
    if not os.path.exists(os.path.join(out_dir, "model.safetensors")):
        raise ExportError(f"transformers did not write {out_dir}/model.safetensors")
    hf_processor(config).save_pretrained(out_dir)
