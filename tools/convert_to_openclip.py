"""Export a trained workdir to OpenCLIP (`--format openclip`) or a transformers CLIPModel (`hf`).

  python -m tools.convert_to_openclip --workdir DIR [--step N | --best] --out OUTDIR [--format openclip|hf]

openclip: OUTDIR/open_clip_config.json (model_cfg + preprocess_cfg) and
OUTDIR/open_clip_model.safetensors, so `open_clip.create_model_and_transforms('local-dir:OUTDIR')`
and `open_clip.get_tokenizer('local-dir:OUTDIR')` load it (strict state_dict loading).
hf: OUTDIR/config.json + model.safetensors of a `transformers.CLIPModel`, and a
`CLIPProcessor`'s tokenizer and image-processor files.

The exporters are `synthclip_jax/export/` (openclip.py, hf.py); this is their command line.
A config the target cannot compute exactly is refused (exit 2), never approximated.
"""
import argparse
import sys

from synthclip_jax.export.openclip import ExportError
from synthclip_jax.run.files import DamagedFile
from synthclip_jax.export.workdir import FORMATS, export
from synthclip_jax.train.best_checkpoint import add_step_flags


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.convert_to_openclip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
    add_step_flags(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=tuple(FORMATS), default="openclip")
    p.add_argument("--ema", action="store_true",
                   help="export the weight average (a run with train.ema_decay > 0)")
    args = p.parse_args(argv)
    try:
        step = export(args.workdir, args.out, args.step, args.format, best=args.best,
                      ema=args.ema)
    except (ExportError, FileNotFoundError, DamagedFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported step {step}{' (EMA weights)' if args.ema else ''} of {args.workdir} to "
          f"{args.out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
