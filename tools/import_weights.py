"""Import PyTorch CLIP weights (OpenCLIP, transformers CLIPModel, SynthCLIP), or an
ImageNet-pretrained ResNet trunk (torchvision, timm), into a workdir.

  python -m tools.import_weights --format openclip|hf|synthclip|torchvision|timm --src PATH
      --out WORKDIR [--config FILE] [--resize-pos-embed] [--skip-keys PATTERN ...]
      [--init-missing PARAM ...] [--timm-model NAME] [--allow-nonfinite]

--src: openclip: a `local-dir` export (open_clip_config.json + open_clip_model.safetensors or
open_clip_pytorch_model.bin) or a state dict file (.safetensors, .bin/.pt, a trainer checkpoint
with 'state_dict' and DDP's 'module.' prefix); hf: a CLIPModel save_pretrained directory;
synthclip: a SynthCLIP checkpoint.pt; torchvision / timm: a ResNet state dict (.pth/.pt/.bin or
.safetensors, e.g. `torch.save(torchvision.models.resnet50(weights=...).state_dict(), PATH)` or
timm's `resnet50.a1_in1k` model.safetensors), which needs --config with
model.image.tower='resnet': its trunk (running statistics included) becomes the image tower,
the classifier `fc` is dropped (printed), and everything else keeps the config's seeded init.
timm also: a timm VisionTransformer classifier state dict (the Scaling-laws seed's supervised
checkpoints) with --timm-model NAME (timm's architecture, e.g. vit_base_patch16_224: a state
dict cannot show the head count): every key is used, head included, and the workdir holds a
train.task='classify' model with the seed's Normalize(0.5, 0.5). Pickled files are read with
torch.load(weights_only=True) and an allowlist of data-only types; anything else is refused.
Weights holding NaN or inf are refused naming the key (--allow-nonfinite imports them), and a
truncated or damaged weights file or a config that is not JSON is named in one line.

WORKDIR gets config.json (the model), an orbax checkpoint at step 0 (weights only), config.py
(for --config=WORKDIR/config.py) and imported.json (where the weights came from). Then:
  evaluate:  python -m synthclip_jax.main --config=WORKDIR/config.py --workdir=WORKDIR \\
                 --mode=eval --config.eval.zeroshot=DIR
  fine-tune: python -m synthclip_jax.main --config=YOUR_CONFIG.py --workdir=NEW \\
                 --config.init_from=WORKDIR
  export:    python -m tools.convert_to_openclip --workdir WORKDIR --out OUT

Without --config the model config comes from the source's own config; with it, the source must
fit it. A key or shape that does not fit stops the import (exit 2) naming the key, both shapes
and the config key to change.
"""
import argparse
import sys

from synthclip_jax.export.import_weights import FORMATS, import_weights, read_config, write_workdir
from synthclip_jax.export.torch_files import WeightsError
from synthclip_jax.run.files import DamagedFile


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.import_weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--src", required=True, help="source directory or weights file")
    p.add_argument("--out", required=True, help="workdir to write (must hold no checkpoint)")
    p.add_argument("--config", default=None,
                   help="config .py (get_config()) or config.json the source must fit; default: "
                        "derived from the source's own config")
    p.add_argument("--resize-pos-embed", action="store_true",
                   help="resize image/text position embeddings to the config's data.image_size "
                        "and model.text.context_length (as OpenCLIP's resize_pos_embed)")
    p.add_argument("--skip-keys", nargs="*", default=[], metavar="PATTERN",
                   help="source keys (fnmatch patterns) deliberately not loaded")
    p.add_argument("--init-missing", nargs="*", default=[], metavar="PARAM",
                   help="our parameter paths (fnmatch, e.g. logit_bias) the source lacks, kept "
                        "at their seeded init")
    p.add_argument("--timm-model", default=None, metavar="NAME",
                   help="--format timm with a ViT classifier state dict: timm's model name "
                        "(e.g. vit_base_patch16_224), which fixes the head count")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="import weights holding NaN or inf (refused by default, naming the key)")
    args = p.parse_args(argv)
    try:
        config = read_config(args.config) if args.config else None
        print(f"reading {args.format} weights from {args.src} ...", flush=True)
        notes = []
        config, params = import_weights(
            args.format, args.src, config, resize_pos_embed=args.resize_pos_embed,
            skip_keys=args.skip_keys, init_missing=args.init_missing, notes=notes,
            timm_model=args.timm_model, allow_nonfinite=args.allow_nonfinite)
        for note in notes:
            print(f"note: {note}", flush=True)
        print(f"writing {args.out} ...", flush=True)
        write_workdir(args.out, config, params, {
            "format": args.format, "src": args.src, "config": args.config,
            "resize_pos_embed": args.resize_pos_embed, "skip_keys": args.skip_keys,
            "init_missing": args.init_missing, "notes": notes, "timm_model": args.timm_model})
    except (WeightsError, DamagedFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = config.model
    if config.train.task == "classify":
        print(f"imported {args.format} {args.src} -> {args.out} (classifier: image "
              f"{m.image.width}x{m.image.depth}/{m.image.patch_size} at "
              f"{config.data.image_size}px, {m.num_classes} classes, eps {m.layernorm_eps})")
        return 0
    image = (f"ResNet-{m.image.resnet_depth}" if m.image.get("tower", "vit") == "resnet" else
             f"{m.image.width}x{m.image.depth}/{m.image.patch_size}")
    print(f"imported {args.format} {args.src} -> {args.out} (image {image} at "
          f"{config.data.image_size}px, text "
          f"{m.text.width}x{m.text.depth}, embed {m.embed_dim}, eps {m.layernorm_eps}, "
          f"{m.activation})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
