"""Stage 4, images: one image per caption, written as webdataset-style pairs files.

  python -m data_gen.images --captions 'balanced/kept*.jsonl' --out DIR [--batch-size 16]
      [--model stable-diffusion-v1-5/stable-diffusion-v1-5] [--steps 50 --guidance 2.0 ...]
      [--worker-index I --num-workers N]
  python -m data_gen.images --prompts templates classnames.txt --out DIR ...
  python -m data_gen.images --shapes 1000 --out DIR              # CPU shapes, for demos/tests

Inputs (one of):
  --captions FILE|GLOB   JSONL with a "caption" per line (the balance stage's kept*.jsonl; the
                         whole input row is kept in each sample's .json under "input"), or a
                         text file with one caption per line; a glob is read in sorted order.
  --prompts classnames F one class name per line; the prompt is the class name (Scaling-laws
                         "Classnames").
  --prompts templates F  every class name in every template of --templates (default: the seven
                         CLIP templates below; "CLIP Templates").
                         With --prompts each sample's .json carries "label", the class's line
                         index in F, which data_gen.write stores as the record's `label`
                         (train.task='classify' trains on it). --backend shapes draws the class
                         ("COLOR SHAPE" names such as "red circle", data_gen/class_shapes.py).
  --shapes N             N scenes invented and drawn by data_gen.shape_scenes with exact
                         captions (--procedural N: deprecated alias).
Captions are cleaned as SynthCLIP does: strip, drop '"', tabs/newlines -> spaces.

Work unit: chunks of --chunk-size captions in input order; chunk c belongs to worker
c % --num-workers and is written as DIR/pairs-CCCCC.tar (temp name + rename; skipped if it
exists, so reruns and preempted workers redo only missing chunks). Each tar holds, per caption
index i, in index order: KEY.jpg (the image), KEY.txt (the caption) and KEY.json
({key, index, caption, seed, source, settings, input}), KEY = s{seed}_{i:09d}; so
`data_gen.import_pairs --input 'DIR/*.tar'` reads the files too. The image of caption i is
seeded with image_seed(seed, i), whatever the worker count or batch size, so reruns
reproduce it. DIR/images_settings.json records the settings; a rerun with different settings
into the same DIR is refused instead of mixing two runs.

Engines (data_gen.engine): --engine local (default) generates here; --engine ray runs this
worker's missing chunks as a Ray Data job (`run_ray`: one ChunkWriter actor per model copy,
each chunk generated with the local batches and seeds and written by the actor that made it),
with the same files byte for byte; a killed job run again does the missing chunks.

Diffusers defaults are SynthCLIP's (REFERENCE 1.5): SD v1.5, DDIM 50 steps, eta 0, guidance
2.0 (the Scaling-laws paper also used 1.5 and 7.5), 512 px generated, resized to 256 px with
PIL BICUBIC (Image.resize's default filter for RGB, which SynthCLIP used) and saved as JPEG
quality 95; fp16 on GPU. No safety checker (SynthCLIP's LDM sampler had none).
"""
import glob
import hashlib
import io
import json
import math
import os
import tarfile
from pathlib import Path

from data_gen import fingerprint
from data_gen.caption_rows import caption_rows
from data_gen.common import (stage_parser, add_worker_args, check_worker_args, progress,
                             worker_items)
from data_gen.engine import add_engine_args, check_engine_args, for_actors, ray_map
from synthclip_jax.data.jpeg import encode_jpeg
from synthclip_jax.run.files import atomic_path
from synthclip_jax.config import cli_paths

# runwayml/stable-diffusion-v1-5 was taken down from the hub; this is its official mirror.
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_IDS = {DEFAULT_MODEL, "runwayml/stable-diffusion-v1-5"}
# The 7-template ensemble from OpenAI CLIP's prompt-engineering notebook (a subset of the 80).
TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
             "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
             "a photo of the small {}.")


def image_seed(seed: int, index: int) -> int:
    """Seed of caption `index`: stable across runs, machines, worker counts and batch sizes."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def flatten_caption(text: str) -> str:
    """The prompt (and stored caption): quotes dropped, every whitespace run one space."""
    return " ".join(text.replace('"', "").split())


def _lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def load_rows(args) -> list[dict]:
    """The input rows, in order; row i is caption index i. Each has at least "caption"."""
    if args.captions:
        paths = sorted(glob.glob(args.captions))
        if not paths:
            raise SystemExit(f"no captions file matches {args.captions}")
        rows = []
        for path in paths:
            if not path.endswith((".jsonl", ".json")):
                rows += [{"caption": line} for line in _lines(path)]
                continue
            rows += caption_rows(path)
        return rows
    kind, path = args.prompts
    names = _lines(path)
    repeat = args.images_per_prompt  # several images of one prompt (seeded by their index)
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: a class name appears twice; labels are line indices")
    if kind == "classnames":
        return [{"caption": n, "classname": n, "label": k} for k, n in enumerate(names)
                for _ in range(repeat)]
    templates = _lines(args.templates) if args.templates else TEMPLATES
    return [{"caption": t.format(n), "classname": n, "template": t, "label": k}
            for k, n in enumerate(names) for t in templates for _ in range(repeat)]


def to_jpeg(image, save_size: int, quality: int) -> bytes:
    from PIL import Image
    image = image.convert("RGB")
    if save_size and image.size != (save_size, save_size):
        image = image.resize((save_size, save_size), Image.Resampling.BICUBIC)
    return encode_jpeg(image, quality)


class Shapes:
    def __init__(self, args):
        self.size, self.seed = args.save_size or args.width, args.seed
        # "procedural": the name this backend had; kept in the pairs' records and settings so
        # that folders written before the rename are still accepted on rerun
        self.source = "procedural"
        self.settings = {"backend": "procedural", "size": self.size, "seed": args.seed,
                         "jpeg_quality": args.jpeg_quality}

        self.rows = None  # with --prompts: the rows, whose class each image draws

    def __call__(self, batch):
        from data_gen.shape_scenes import scene_captions
        if self.rows is not None:
            from data_gen.class_shapes import render_class
            return [(c, render_class(self.rows[i]["classname"], image_seed(self.seed, i),
                                     self.size)) for i, c in batch]
        return [scene_captions(image_seed(self.seed, i), self.size) for i, _ in batch]


class Diffusers:
    def __init__(self, args):
        self.args, self.pipe = args, None
        model = args.model.rstrip("/")
        short = "sd15" if model in SD15_IDS else os.path.basename(model)
        self.source = f"{short}:ddim{args.steps}:g{float(args.guidance)}"
        self.settings = {"backend": "diffusers", "model": args.model, "scheduler": "DDIM",
                         "steps": args.steps, "guidance": args.guidance, "eta": args.eta,
                         "height": args.height, "width": args.width, "save_size": args.save_size,
                         "resize_filter": "PIL.BICUBIC", "jpeg_quality": args.jpeg_quality,
                         "dtype": args.dtype, "seed": args.seed, "negative_prompt": "",
                         "seed_rule": "sha256('{seed}:{index}')[:8] LE & (2**63-1), "
                                      "torch.Generator('cpu') per image"}

    def _load(self):
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline
        device = self.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.args.dtype
        if dtype == "auto":
            dtype = "float16" if device.startswith("cuda") else "float32"
        pipe = StableDiffusionPipeline.from_pretrained(
            self.args.model, dtype=getattr(torch, dtype), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)

    def __call__(self, batch):
        import torch
        if self.pipe is None:
            self._load()
        a = self.args
        # CPU generators: the initial latents are then the same on any GPU and for any batch
        # size (diffusers draws each image's latents from its own generator in the list).
        gens = [torch.Generator("cpu").manual_seed(image_seed(a.seed, i)) for i, _ in batch]
        out = self.pipe([c for _, c in batch], height=a.height, width=a.width,
                        num_inference_steps=a.steps, guidance_scale=a.guidance, eta=a.eta,
                        generator=gens, output_type="pil")
        return [(c, img) for (_, c), img in zip(batch, out.images)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # mtime/uid/owner left at 0/"": byte-identical reruns
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def write_pairs(path: Path, samples: list[dict]) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for s in samples:
            jpeg = s.pop("jpeg")
            _add(tar, f"{s['key']}.jpg", jpeg)
            _add(tar, f"{s['key']}.txt", s["caption"].encode("utf-8"))
            _add(tar, f"{s['key']}.json",
                 json.dumps(s, ensure_ascii=False, sort_keys=True).encode("utf-8"))


def check_settings(out: Path, settings: dict) -> None:
    fingerprint.claim(out / "images_settings.json", settings, stage="images",
                      fix="use another --out, or delete it to generate again")


class Plan:
    """What a run generates: the input rows, cleaned captions, settings and this worker's chunks
    still to do. Both engines (local here, ray in data_gen.images_ray) work from one."""

    def __init__(self, args):
        check_worker_args(args.worker_index, args.num_workers)
        self.backend = make_backend(args)
        if args.shapes:
            self.rows, self.captions = [{} for _ in range(args.shapes)], None
        else:
            self.rows = load_rows(args)
            self.captions = [flatten_caption(r["caption"]) for r in self.rows]
            if not all(self.captions):
                raise SystemExit(f"empty caption at index {self.captions.index('')}")
        prompts = ({"prompts": args.prompts[0], "templates": list(TEMPLATES) if args.prompts[0]
                    == "templates" and not args.templates else args.templates,
                    "images_per_prompt": args.images_per_prompt} if args.prompts else {})
        # The captions' hash: a rerun on other captions into the same --out is refused.
        digest = hashlib.sha256("\n".join(self.captions or []).encode()).hexdigest()
        self.settings = {**self.backend.settings, **prompts, "source": self.backend.source,
                         "chunk_size": args.chunk_size, "num_captions": len(self.rows),
                         **({"captions_sha256": digest} if self.captions else {})}
        self.out, self.chunk_size = Path(args.out), args.chunk_size
        chunks = range(math.ceil(len(self.rows) / args.chunk_size))
        mine = worker_items(chunks, args.worker_index, args.num_workers)
        self.todo = [c for c in mine if not (self.out / f"pairs-{c:05d}.tar").exists()]
        print(f"images: {len(self.rows)} captions in {len(chunks)} chunks; worker "
              f"{args.worker_index}/{args.num_workers} has {len(mine)}, "
              f"{len(mine) - len(self.todo)} already done", flush=True)
        check_settings(self.out, self.settings)

    def indices(self, c: int) -> range:
        return range(c * self.chunk_size, min((c + 1) * self.chunk_size, len(self.rows)))

    def chunk_input(self, c: int) -> dict:
        """Chunk c's rows and captions: all a (remote) generator needs besides the args."""
        idx = self.indices(c)
        return {"chunk": c, "start": idx.start, "rows": [self.rows[i] for i in idx],
                "captions": [self.captions[i] for i in idx] if self.captions else None}


def make_backend(args):
    if args.backend != "shapes":
        return Diffusers(args)
    backend = Shapes(args)
    if args.prompts:  # class images: each draws its row's class (rows from args alone, so
        backend.rows = load_rows(args)  # a Ray actor builds the same backend)
    return backend


def chunk_samples(args, backend, settings: dict, chunk: dict):
    """The samples of one chunk (Plan.chunk_input), in index order, generated in batches of
    --batch-size from the chunk's start: the same batches, hence the same bytes, wherever and
    on whichever engine the chunk runs."""
    rows, captions, start = chunk["rows"], chunk["captions"], chunk["start"]
    for b in range(0, len(rows), args.batch_size):
        batch = [(start + k, captions[k] if captions else None)
                 for k in range(b, min(b + args.batch_size, len(rows)))]
        # (caption, image), or (caption, web caption, image) from the shapes backend
        for (i, _), (caption, *web, image) in zip(batch, backend(batch)):
            yield {"key": f"s{args.seed}_{i:09d}", "index": i, "caption": caption,
                   "seed": image_seed(args.seed, i), "source": backend.source,
                   "settings": settings, "input": rows[i - start],
                   **({"web_caption": web[0]} if web else {}),
                   **({"label": rows[i - start]["label"]} if "label" in rows[i - start] else {}),
                   "jpeg": to_jpeg(image, args.save_size, args.jpeg_quality)}


class ChunkWriter:
    """--engine ray's actor: one backend (model loaded on first use) for its life; a chunk in
    (Plan.chunk_input as JSON: the rows are free-form dicts, which Arrow would force into one
    schema), its pairs file written here, under a temporary name then renamed, as local."""

    def __init__(self, args, settings: dict):
        self.args, self.settings, self.out = args, settings, Path(args.out)
        self.backend = make_backend(args)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        counts = []
        for payload in batch["payload"]:
            chunk = json.loads(payload)
            samples = list(chunk_samples(self.args, self.backend, self.settings, chunk))
            write_pairs(self.out / f"pairs-{chunk['chunk']:05d}.tar", samples)
            counts.append(len(samples))
        return {"chunk": batch["chunk"], "samples": np.asarray(counts, dtype=np.int64)}


def run_ray(args, plan: Plan) -> None:
    """This worker's missing chunks as one Ray Data job (data_gen.engine.ray_map)."""
    from data_gen.progress import Progress
    items = [{"chunk": c, "payload": json.dumps(plan.chunk_input(c), ensure_ascii=False)}
             for c in plan.todo]
    rows = ray_map(args, items, ChunkWriter, {"args": for_actors(args, "out", "model"),
                                              "settings": plan.settings}, "images")
    with Progress("images (ray)", sum(len(plan.indices(c)) for c in plan.todo),
                  "images") as bar:
        for row in rows:
            bar.update(int(row["samples"]), note=f"chunk {int(row['chunk'])}")


def run(args) -> int:
    plan = Plan(args)
    if args.engine == "ray":
        if plan.todo:
            run_ray(args, plan)
        return 0

    def generate():  # yields (chunk, sample)
        for c in plan.todo:
            for sample in chunk_samples(args, plan.backend, plan.settings, plan.chunk_input(c)):
                yield c, sample

    total = sum(len(plan.indices(c)) for c in plan.todo)
    done = []
    for c, sample in progress(generate(), total, "images"):
        done.append(sample)
        if len(done) == len(plan.indices(c)):
            write_pairs(plan.out / f"pairs-{c:05d}.tar", done)
            done = []
    return 0


def parse_args(argv=None):
    p = stage_parser("images", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", metavar="FILE_OR_GLOB",
                     help="JSONL with 'caption' per row, or one caption per line")
    src.add_argument("--prompts", nargs=2, metavar=("{classnames,templates}", "FILE"),
                     help="class names file, used as is or inside CLIP templates")
    src.add_argument("--shapes", "--procedural", dest="shapes", type=int, metavar="N",
                     help="invent N shape scenes (implies --backend shapes); --procedural is a "
                     "deprecated alias")
    p.add_argument("--templates", help="templates file for --prompts templates, one per line "
                   "with {} for the class name (default: 7 CLIP templates)")
    p.add_argument("--images-per-prompt", type=int, default=1, metavar="K",
                   help="with --prompts: K images of each prompt (each its own seed), in a row")
    p.add_argument("--out", required=True, help="output folder for pairs-CCCCC.tar")
    p.add_argument("--backend", choices=("diffusers", "shapes", "procedural"), default=None,
                   help="default: shapes with --shapes, else diffusers (procedural: deprecated "
                   "alias of shapes)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers model id or local path")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", type=float, default=2.0, help="CFG scale (default 2.0)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--save-size", type=int, default=256,
                   help="saved square size in px (0: as generated; shapes draws at it)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=1000, help="captions per pairs file")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", choices=("auto", "float16", "bfloat16", "float32"),
                   default="auto", help="auto: float16 on CUDA, float32 on CPU")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_worker_args(p)
    add_engine_args(p)
    args = p.parse_args(argv)
    if args.prompts and args.prompts[0] not in ("classnames", "templates"):
        p.error("--prompts takes 'classnames FILE' or 'templates FILE'")
    if args.backend is None:
        args.backend = "shapes" if args.shapes else "diffusers"
    args.backend = "shapes" if args.backend == "procedural" else args.backend
    if args.backend == "shapes" and not (args.shapes or args.prompts):
        p.error("the shapes backend invents its captions (--shapes N) or draws the classes of "
                "--prompts classnames|templates FILE")
    if args.shapes and args.backend != "shapes":
        p.error("--shapes N needs the shapes backend")
    if min(args.batch_size, args.chunk_size, args.images_per_prompt) < 1 or (args.shapes or 1) < 1:
        p.error("--batch-size, --chunk-size, --images-per-prompt and --shapes must be >= 1")
    if args.images_per_prompt > 1 and not args.prompts:
        p.error("--images-per-prompt needs --prompts classnames|templates FILE")
    check_engine_args(p, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli_paths.output_dir("images", "--out", args.out)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
