"""The data_gen stage's cost on the checked device (the last parts of tools/bench/device_check.py).

Random weights cost the same compute as trained ones, so both stages are timed with models of
the real architecture built from configs written here (nothing downloaded):

* images: Stable Diffusion 1.5's UNet / VAE / CLIP text encoder configs, random weights, fp16,
  through `data_gen.images`' own diffusers backend (`Diffusers.__call__`, DDIM 50, CFG 2,
  512 px, batch 16, JPEG encoding as the stage saves it) -> images/s and GPU-days for 30M.
* captions: two decoder layers of Mistral-7B's shape (transformers, bf16) generating with
  `data_gen.captions`' seeded sampler; time per token scaled to 32 layers (x16: the embedding,
  LM head and sampling are counted 16 times too, so captions/s is a lower bound; vLLM's
  batching is faster still).

`--smoke`: the same code with tiny configs on CPU.
"""
import argparse
import json
import time

SYNTHCI_IMAGES = 30_000_000  # SynthCI-30M: one image per caption
TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def byte_vocab() -> dict:
    """CLIP's byte-to-unicode table as a BPE vocabulary without merges: every text tokenizes
    (SD1.5's text encoder has 49408 embeddings; these ids all fall inside them)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    return {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + TOKENS)}


def sd15_pipeline(folder, smoke: bool, device: str, dtype):
    """A StableDiffusionPipeline of SD1.5's architecture (or a tiny one), random weights."""
    import diffusers
    import torch
    import transformers

    vocab = byte_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"),
                                           str(folder / "merges.txt"), model_max_length=77)
    if smoke:
        unet = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
        vae = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2)
        text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                    num_hidden_layers=2)
    else:  # runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json
        unet = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                    sample_size=64, attention_head_dim=8, cross_attention_dim=768,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                   sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4)
        text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                    num_hidden_layers=12, hidden_act="quick_gelu", vocab_size=49408)
    torch.manual_seed(0)
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **unet)
        vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **vae)
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            **{"vocab_size": len(vocab), "max_position_embeddings": 77,
               "bos_token_id": vocab[TOKENS[0]], "eos_token_id": vocab[TOKENS[1]],
               "pad_token_id": vocab[TOKENS[1]], **text}))
    pipe = assemble_pipeline(vae, text, tokenizer, unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def assemble_pipeline(vae, text, tokenizer, unet):
    """A StableDiffusionPipeline of these parts with SD v1.5's DDIM scheduler config."""
    import diffusers

    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1)
    return diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def part_data_gen_images(spec, ctx, box):
    import tempfile
    from pathlib import Path

    import torch

    from data_gen import images

    smoke = ctx["smoke"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    size, batch, steps = (64, 2, 2) if smoke else (512, 16, 50)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.txt").write_text("a photo of a cat\n")
        args = images.parse_args(["--captions", f"{tmp}/c.txt", "--out", f"{tmp}/out",
                                  "--model", "sd15-architecture-random", "--height",
                                  str(size), "--width", str(size), "--steps", str(steps),
                                  "--batch-size", str(batch), "--device", device])
        backend = images.Diffusers(args)
        t0 = time.perf_counter()
        backend.pipe = sd15_pipeline(Path(tmp), smoke, device, dtype)
        build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in backend.pipe.unet.parameters())
    captions = [(i, f"a photo of concept number {i} in a sunny field") for i in range(batch)]

    def one_batch():
        samples = backend(captions)
        return [images.to_jpeg(img, args.save_size, args.jpeg_quality) for _, img in samples]

    t0 = time.perf_counter()
    one_batch()  # warm-up: cuDNN autotuning, allocator
    warm_s = time.perf_counter() - t0
    timed = []
    while len(timed) < 2 and (not timed or box.left() > timed[-1] * 1.2):
        t0 = time.perf_counter()
        one_batch()
        timed.append(time.perf_counter() - t0)
    per_s = batch / min(timed)
    return dict(device=device, dtype=str(dtype), size=size, batch=batch, ddim_steps=steps,
                guidance=args.guidance, unet_params=params, build_s=build_s,
                warmup_batch_s=warm_s, batch_s=timed, images_per_s=per_s,
                gpu_days_for_30m=SYNTHCI_IMAGES / per_s / 86400)


def part_data_gen_captions(spec, ctx, box):
    import torch
    import transformers

    from data_gen.captions import seeded_sampler_class

    smoke = ctx["smoke"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if smoke:
        shape = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1000)
        batch, prompt_len, new = 4, 16, 4
    else:  # mistralai/Mistral-7B-Instruct-v0.2 config.json, 2 of its 32 layers
        shape = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=32000, rope_theta=1e6)
        # SynthCLIP's prompt in Mistral's chat template is ~80 tokens; a caption of <= 15
        # words ~32 tokens; vLLM's default batch in data_gen is 1024, here 256 prompts.
        batch, prompt_len, new = 256, 80, 32
    layers = 2
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.MistralForCausalLM(transformers.MistralConfig(
            num_hidden_layers=layers, max_position_embeddings=4096, **shape)).to(dtype).eval()
    ids = torch.randint(3, shape["vocab_size"], (batch, prompt_len), device=device)
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=new,
                                           min_new_tokens=new, pad_token_id=0, eos_token_id=2)
    sampler = seeded_sampler_class()

    def generate():
        processor = sampler(list(range(batch)), 0.7, 0.95, 1.0, 1.0, device)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                           generation_config=config,
                           logits_processor=transformers.LogitsProcessorList([processor]))
        if device == "cuda":
            torch.cuda.synchronize()

    generate()  # warm-up
    t0 = time.perf_counter()
    generate()
    two_layer_s = time.perf_counter() - t0
    full_s = two_layer_s * 32 / layers
    per_s = batch / full_s
    return dict(device=device, dtype=str(dtype), layers_timed=layers, batch=batch,
                prompt_tokens=prompt_len, new_tokens=new, two_layer_batch_s=two_layer_s,
                scaled_32_layer_batch_s=full_s, captions_per_s_lower_bound=per_s,
                gpu_days_for_30m_upper_bound=SYNTHCI_IMAGES / per_s / 86400)


PARTS = {"data_gen_images": part_data_gen_images, "data_gen_captions": part_data_gen_captions}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.parse_args()
    print("run through tools/bench/device_check.sh (parts data_gen_images, data_gen_captions)")
