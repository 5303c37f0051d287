"""The seed configs compute the seeds' functions: each config, at reduced dimensions, against the
PyTorch model built the way the seed's code builds it, with the same weights.

- SynthCLIP (`configs/vitb16_synthci30m.py`): timm `VisionTransformer` (what
  `timm.create_model("vit_base_patch16_224", num_classes=0)` builds) + a bias-free image
  projection, and OpenAI CLIP's text transformer written out below with torch.nn modules
  (REFERENCE 1.7: QuickGELU, float32 LayerNorm eps 1e-5, causal mask, argmax pooling).
- CLIPS (`configs/clips_vitl14.py`): open_clip's `CLIP` with the CLIPS JSON's options.
- SimCLIP (`configs/simclip_vitb32_finetune.py`): transformers' `CLIPModel` from a CLIPConfig as
  openai/clip-vit-base-patch32's, features as SimCLIP's `encode_image`/`encode_text`.

Features are compared L2-normalised, as max|torch - ours| / max|ours|. Every parameter is
perturbed beyond its init so that a swapped or missing tensor shows. The negative cases change
one tower's eps or GELU form in our config and must break parity. Last, the SynthCLIP export loads
in the real open_clip through its timm image tower and computes our function.
"""
import collections
import importlib
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from synthclip_jax.data.clips_tokenizer import clips_row  # noqa: E402
from synthclip_jax.data.tokenizer import tokenize  # noqa: E402
from synthclip_jax.export import openclip as oc  # noqa: E402
from synthclip_jax.export import timm_vit  # noqa: E402
from synthclip_jax.export.fit import unflatten  # noqa: E402
from synthclip_jax.export.hf import hf_state_dict  # noqa: E402
from synthclip_jax.models.two_tower import build_model  # noqa: E402
from tests.test_convert_openclip import (TEXTS, jax_forward, openclip_parity,  # noqa: E402
                                         random_params)
from tests.test_models import set_model_keys  # noqa: E402

TOL = 1e-5
WIDTH, DEPTH, HEADS, PATCH, IMAGE, CONTEXT, EMBED = 32, 2, 4, 8, 32, 16, 16


def seed_config(name, **model):
    """The seed config at reduced dimensions, every per-tower option as shipped."""
    c = importlib.import_module(f"configs.{name}").get_config()
    c.data.image_size = IMAGE
    c.model.embed_dim = EMBED
    c.model.dtype = "float32"
    c.model.remat = False
    c.model.image.update(width=WIDTH, depth=DEPTH, heads=HEADS, patch_size=PATCH)
    c.model.text.update(width=WIDTH, depth=DEPTH, heads=HEADS, context_length=CONTEXT)
    return set_model_keys(c, model)


def flat(params):
    return oc._flatten(params)


def perturb_(module, seed=0):
    """Every torch parameter moved off its init (LN 1/0, zero biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def normalized(x):
    x = x.detach().numpy().astype(np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rel_err(ours, theirs):
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


def images(seed=1):
    # Small pixel values keep the first LayerNorms' input variance small, where eps shows: a
    # 1e-5 vs 1e-6 mix-up moves the image features by ~4e-5 here (~8e-6 at unit scale).
    return 0.1 * np.random.default_rng(seed).standard_normal((3, IMAGE, IMAGE, 3)).astype(
        np.float32)


def nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def ours_features(config, params, imgs, tokens):
    img, txt, _ = jax_forward(config, params, imgs, tokens)
    return img.astype(np.float64), txt.astype(np.float64)


# --- SynthCLIP: timm ViT + OpenAI text tower -----------------------------------------------

class LayerNorm(torch.nn.LayerNorm):
    """OpenAI CLIP's LayerNorm: computed in float32 (default eps 1e-5)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(torch.nn.Module):
    def __init__(self, width, heads, attn_mask):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = torch.nn.Sequential(collections.OrderedDict([
            ("c_fc", torch.nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
            ("c_proj", torch.nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class OpenAIText(torch.nn.Module):
    """SynthCLIP's text side of `CLIP_VITB16` (OpenAI CLIP's `encode_text`)."""

    def __init__(self, vocab, context, width, heads, layers, embed_dim):
        super().__init__()
        mask = torch.empty(context, context).fill_(float("-inf")).triu_(1)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.Sequential(
            *[ResidualAttentionBlock(width, heads, mask) for _ in range(layers)])
        self.token_embedding = torch.nn.Embedding(vocab, width)
        self.positional_embedding = torch.nn.Parameter(torch.empty(context, width))
        self.ln_final = LayerNorm(width)
        self.text_projection = torch.nn.Parameter(torch.empty(width, embed_dim))
        torch.nn.init.normal_(self.token_embedding.weight, std=0.02)
        torch.nn.init.normal_(self.positional_embedding, std=0.01)
        torch.nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


def synthclip_parity(config):
    """timm image tower (random, perturbed) copied into ours (the timm key table, as the
    SynthCLIP weight import will); our text tower copied into the OpenAI text module."""
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
        num_classes=0)  # SynthCLIP: timm.create_model("vit_base_patch16_224", num_classes=0)
    perturb_(vit)
    image_projection = torch.randn(WIDTH, EMBED) * WIDTH**-0.5

    params = flat(random_params(config))
    shapes = {k[len("visual/"):]: v.shape for k, v in params.items() if k.startswith("visual/")}
    visual = timm_vit.from_timm({k: v.numpy() for k, v in vit.state_dict().items()}, shapes)
    visual["proj"] = image_projection.numpy()
    assert set(visual) == set(shapes), set(visual) ^ set(shapes)
    params.update({f"visual/{k}": v for k, v in visual.items()})
    params = unflatten(params)

    m = config.model.text
    text = OpenAIText(m.vocab_size, m.context_length, m.width, m.heads, m.depth, EMBED)
    theirs = {k: torch.from_numpy(v) for k, v in oc.openclip_state_dict(params).items()
              if not k.startswith("visual.") and k != "logit_scale"}
    text.load_state_dict(theirs, strict=True)

    imgs, tokens = images(), tokenize(TEXTS, m.context_length)
    with torch.no_grad():
        ref_img = vit.eval()(nchw(imgs)) @ image_projection
        ref_txt = text(torch.from_numpy(tokens.astype(np.int64)))
    img, txt = ours_features(config, params, imgs, tokens)
    return {"image": rel_err(img, normalized(ref_img)), "text": rel_err(txt, normalized(ref_txt))}


# --- CLIPS: open_clip CLIP with the CLIPS JSON's options ---------------------------------------

def clips_reference():
    vision = dict(image_size=IMAGE, layers=DEPTH, width=WIDTH, head_width=WIDTH // HEADS,
                  patch_size=PATCH, no_ln_pre=True, pool_type="avg", final_ln_after_pool=True,
                  norm_kwargs={"eps": 1e-6})  # ViT-L-14-CLIPS-224.json, reduced
    text = dict(context_length=CONTEXT, vocab_size=32000, width=WIDTH, heads=HEADS, layers=DEPTH,
                no_causal_mask=True, pool_type="last", act_kwargs={"approximate": "tanh"},
                norm_kwargs={"eps": 1e-6})
    return open_clip.model.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=text)


def clips_tokens(n=4, seed=2):
    rng = np.random.default_rng(seed)
    return np.stack([clips_row(list(rng.integers(999, 30522, size=int(rng.integers(1, 20)))),
                               CONTEXT) for _ in range(n)])


def torch_clip_parity(config, model, state):
    """Our (perturbed) params loaded into an OpenCLIP-API `model` through `state`."""
    params = random_params(config)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state(params).items()}, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (
        missing, unexpected)
    return params


def clips_parity(config):
    model = clips_reference().eval()
    params = torch_clip_parity(config, model, oc.openclip_state_dict)
    imgs, tokens = images(), clips_tokens()
    with torch.no_grad():
        ref_img = model.encode_image(nchw(imgs))
        ref_txt = model.encode_text(torch.from_numpy(tokens.astype(np.int64)))
    img, txt = ours_features(config, params, imgs, tokens)
    return {"image": rel_err(img, normalized(ref_img)), "text": rel_err(txt, normalized(ref_txt))}


# --- SimCLIP: transformers CLIPModel -------------------------------------------------------------

def simclip_reference():
    # openai/clip-vit-base-patch32's config.json, reduced: quick_gelu, eps 1e-5, eos id 2 (the
    # legacy id with which CLIPTextTransformer pools at input_ids.argmax)
    common = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
                  num_attention_heads=HEADS, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = dict(vocab_size=49408, max_position_embeddings=CONTEXT, bos_token_id=0, eos_token_id=2,
                pad_token_id=1, **common)
    vision = dict(image_size=IMAGE, patch_size=PATCH, **common)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED)
    return transformers.CLIPModel(config)


def simclip_parity(config):
    model = simclip_reference().eval()
    params = torch_clip_parity(config, model, lambda p: hf_state_dict(config, p))
    imgs, tokens = images(), tokenize(TEXTS, CONTEXT)
    with torch.no_grad():  # SimCLIP's encode_image / encode_text (models/model.py)
        ref_img = model.visual_projection(model.vision_model(nchw(imgs)).pooler_output)
        ids = torch.from_numpy(tokens.astype(np.int64))
        ref_txt = model.text_projection(model.text_model(ids).pooler_output)
    img, txt = ours_features(config, params, imgs, tokens)
    return {"image": rel_err(img, normalized(ref_img)), "text": rel_err(txt, normalized(ref_txt))}


SEEDS = {
    "vitb16_synthci30m": synthclip_parity,
    "clips_vitl14": clips_parity,
    "simclip_vitb32_finetune": simclip_parity,
}


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_model_matches_reference(seed):
    errs = SEEDS[seed](seed_config(seed))
    print(f"\n{seed}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


# One wrong eps or GELU form on one tower of our config: that tower's features must leave the
# tolerance (the reference stays right). (seed, our wrong key, value, tower that must break)
WRONG = [
    ("vitb16_synthci30m", "image.layernorm_eps", 1e-5, "image"),
    ("vitb16_synthci30m", "image.activation", "gelu_tanh", "image"),
    ("vitb16_synthci30m", "text.layernorm_eps", 1e-6, "text"),
    ("vitb16_synthci30m", "text.activation", "gelu", "text"),
    ("clips_vitl14", "image.layernorm_eps", 1e-5, "image"),
    ("clips_vitl14", "image.activation", "gelu_tanh", "image"),
    ("clips_vitl14", "text.layernorm_eps", 1e-5, "text"),
    ("clips_vitl14", "text.activation", "gelu", "text"),
    ("simclip_vitb32_finetune", "image.layernorm_eps", 1e-6, "image"),
    ("simclip_vitb32_finetune", "text.activation", "gelu", "text"),
]


@pytest.mark.parametrize("seed, key, value, tower", WRONG,
                         ids=[f"{s}-{k}" for s, k, _, _ in WRONG])
def test_wrong_eps_or_gelu_breaks_parity(seed, key, value, tower):
    errs = SEEDS[seed](seed_config(seed, **{key: value}))
    assert errs[tower] > 2 * TOL, errs  # fails the parity test with a margin


def test_synthclip_export_loads_through_timm_tower(tmp_path, caplog):
    """SynthCLIP's model (exact-GELU timm image + QuickGELU text) at timm's `test_vit` size
    (width 64, depth 6, 2 heads, mlp ratio 3, 160 px) exported, loaded by open_clip with timm."""
    config = seed_config("vitb16_synthci30m")
    config.data.image_size = 160
    config.model.image.update(width=64, depth=6, heads=2, patch_size=16, mlp_ratio=3.0)
    model_cfg = oc.openclip_config(config)["model_cfg"]
    assert model_cfg["vision_cfg"]["timm_model_name"] == "test_vit"
    assert model_cfg["quick_gelu"] and model_cfg["text_cfg"]["norm_kwargs"] == {"eps": 1e-5}
    model, errs = openclip_parity(config, random_params(config), tmp_path / "synthclip", caplog)
    assert type(model.visual).__name__ == "TimmModel"
    assert max(errs.values()) <= TOL, errs


def test_timm_table_names_real_architectures():
    """TIMM_VITS rows are what timm builds under those names (the small ones; the rest follow
    timm's naming)."""
    for name in ("test_vit", "vit_tiny_patch16_224"):
        vit = timm.create_model(name, num_classes=0)
        width, depth, heads, patch, mlp_ratio, size = timm_vit.TIMM_VITS[name]
        assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (width, depth,
                                                                                   heads)
        assert vit.patch_embed.patch_size == (patch, patch)
        assert vit.blocks[0].mlp.fc1.out_features == int(width * mlp_ratio)
        assert vit.pos_embed.shape[1] == (size // patch) ** 2 + 1
        assert vit.norm_pre.__class__.__name__ == "Identity" and vit.global_pool == "token"
        assert vit.norm.eps == timm_vit.TIMM_LAYERNORM_EPS


def test_timm_table_round_trip():
    config = seed_config("vitb16_synthci30m")
    params = flat(random_params(config))
    visual = {k[len("visual/"):]: v for k, v in params.items() if k.startswith("visual/")}
    visual.pop("proj")
    back = timm_vit.from_timm(timm_vit.to_timm(visual), {k: v.shape for k, v in visual.items()})
    assert set(back) == set(visual)
    for k in visual:
        np.testing.assert_array_equal(back[k], visual[k])


def test_logit_scale_clamp_and_constant_schedule():
    """SimCLIP: the log-scale clamps to [-ln 100, ln 100]; the lr warms up 200 steps to 1e-5
    and stays there (GradualWarmupScheduler(multiplier=1): lr * step / 200)."""
    from synthclip_jax.train.optimizer import make_schedule

    config = seed_config("simclip_vitb32_finetune")
    model = build_model(config, 0)
    for value, clamped in ((-9.0, -math.log(100)), (9.0, math.log(100)), (-1.0, -1.0)):
        model.logit_scale[...] = value
        model.clamp_logit_scale(config.model.logit_scale_max)
        assert math.isclose(float(model.logit_scale[...]), clamped, rel_tol=1e-6)
    schedule = make_schedule(config)
    for step in (0, 50, 199, 200, 1000, config.total_steps - 1):
        assert math.isclose(float(schedule(step)), 1e-5 * min(step, 200) / 200, rel_tol=1e-5)
