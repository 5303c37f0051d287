"""Stage 2: K captions per concept from an instruction LLM (SynthCLIP's prompt and sampling).

    python -m data_gen.captions --concepts concepts.txt --out captions/ --backend vllm \
        --captions-per-concept 5 --seed 0 --worker-index I --num-workers N

Worker I takes concepts I, I+N, ... (`worker_items`) and writes `captions-IIIII-of-NNNNN.jsonl`
(rows: concept, caption, seed, model, concept_index, k) plus `...stats.json`, atomically; an
existing output is skipped (OUT/.fingerprint-captions.json records the bank's size and mtime and
the settings: a run with others into the same OUT is refused rather than mixed). The prompt is
SynthCLIP's, verbatim (typo included), wrapped in the model's own chat template
(`apply_chat_template`; Mistral's gives `<s>[INST] ... [/INST]`, where SynthCLIP concatenated
`"<s> [INST] " + msg + " [/INST]"` by hand). Prompts go to the backend as token ids so the BOS
is not added twice.

Seeds: caption k of concept i (its line number in the bank) is sampled with
`seed = caption_seed(S, i, k)`, a hash, so a rerun, another worker count or another batch size gives
the same request seeds (SynthCLIP drew a random vLLM seed per run instead).
Backends, same prompts and same output rows:
  vllm          GPU, `LLM.generate` with per-request `SamplingParams(seed=...)`; imported lazily.
  transformers  CPU/GPU `generate`, left-padded batches. Sampling is done by `SeededSampler`, a
                LogitsProcessor reproducing vLLM's: OpenAI presence/frequency penalties over the
                generated tokens, then temperature, then top-p, then a draw from a per-sample
                torch.Generator seeded with the request seed (so a caption does not depend on
                its batch-mates); it returns a one-hot mask and generate runs greedy.
Engines (data_gen.engine): --engine local (default) writes worker --worker-index's file here;
--engine ray writes every missing one of the --num-workers files from one Ray Data job
(`run_ray`: RayGenerator actors hold the backend and get the local engine's batches), the same
bytes as the local workers'; a file is written once its last batch is back, so a killed job run
again redoes only the files not yet written (use --num-workers of a few times --concurrency).
Cleaning as SynthCLIP (substr_matching.py): a raw output containing "\\n" is dropped (counted),
the rest become `text.replace('"', "").strip(" ").strip("\\n")`; empty results are dropped too.
"""
import hashlib
import json
import sys
from pathlib import Path

from data_gen import fingerprint
from data_gen.common import (add_worker_args, check_worker_args, progress, stage_parser,
                             worker_items, worker_suffix, write_jsonl_atomic)
from data_gen.concepts import load_bank
from data_gen.engine import (ENGINE_ARGS, add_engine_args, check_engine_args, for_actors,
                             ray_map)
from synthclip_jax.run.files import atomic_path
from synthclip_jax.config import cli_paths

DEFAULT_MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
PROMPT = ("Your task is to write me an image caption that includes and visually describes a scene "
          "around a concept. Your concept is: {concept}. Output one single grammatically caption "
          "that is no longer than 15 words. Do not output any notes, word counts, facts, etc. "
          "Output one single sentence only.")


def caption_seed(seed: int, concept_index: int, k: int) -> int:
    digest = hashlib.sha256(f"{seed}:{concept_index}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF  # fits every backend's int32


def clean_llm_caption(text: str):
    """SynthCLIP's rule: None for a multi-line output, else quotes removed and edges stripped."""
    if "\n" in text:
        return None
    return text.replace('"', "").strip(" ").strip("\n")


def prompt_ids(tokenizer, concept: str) -> list:
    messages = [{"role": "user", "content": PROMPT.format(concept=concept)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # template has the BOS


class VllmBackend:
    def __init__(self, args):
        try:  # lazy: only this backend needs vllm (CUDA-first)
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise SystemExit(f"captions: --backend vllm needs vllm ({e}); pip install vllm, "
                             "or use --backend transformers") from e
        self.sampling_params = SamplingParams
        self.llm = LLM(model=args.model, dtype=args.dtype or "float16", seed=args.seed,
                       tensor_parallel_size=args.tensor_parallel_size)
        self.tokenizer = self.llm.get_tokenizer()
        self.args = args

    def generate(self, prompts, seeds):
        a = self.args
        params = [self.sampling_params(
            temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_tokens,
            presence_penalty=a.presence_penalty, frequency_penalty=a.frequency_penalty, seed=s)
            for s in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                    use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def seeded_sampler_class():
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        """vLLM-style sampling with one generator per row; returns a one-hot 'choice' mask."""

        def __init__(self, seeds, temperature, top_p, presence, frequency, device):
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            self.temperature, self.top_p = temperature, top_p
            self.presence, self.frequency = presence, frequency
            self.prompt_len = None

        def __call__(self, input_ids, scores):
            if self.prompt_len is None:  # first step: all of input_ids is the (padded) prompt
                self.prompt_len = input_ids.shape[1]
            scores = scores.float()
            generated = input_ids[:, self.prompt_len:]
            if generated.shape[1]:  # penalties count output tokens only, as vLLM/OpenAI
                counts = torch.zeros_like(scores).scatter_add_(
                    1, generated, torch.ones_like(generated, dtype=scores.dtype))
                scores = scores - self.frequency * counts - self.presence * (counts > 0)
            if self.temperature <= 0:  # greedy, as vLLM for temperature 0
                choice = scores.argmax(-1)
            else:
                probs = torch.softmax(scores / self.temperature, -1)
                sorted_p, order = probs.sort(-1, descending=True)
                # keep the smallest prefix with mass >= top_p (always the top token)
                drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                choice = torch.stack([order[r, torch.multinomial(
                    sorted_p[r], 1, generator=self.generators[r])[0]]
                    for r in range(scores.shape[0])])
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, choice[:, None], 0.0)

    return SeededSampler


class TransformersBackend:
    def __init__(self, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.torch, self.args = torch, args
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, args.dtype) if args.dtype else (
            torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(self.device)
        self.model.eval()
        self.sampler = seeded_sampler_class()

    def generate(self, prompts, seeds):
        from transformers import GenerationConfig, LogitsProcessorList
        torch, tok, a = self.torch, self.tokenizer, self.args
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=self.device)
        sampler = self.sampler(seeds, a.temperature, a.top_p, a.presence_penalty,
                               a.frequency_penalty, self.device)
        config = GenerationConfig(do_sample=False, max_new_tokens=a.max_tokens,
                                  pad_token_id=pad, eos_token_id=tok.eos_token_id)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      logits_processor=LogitsProcessorList([sampler]))
        return tok.batch_decode(out[:, width:], skip_special_tokens=True)


def parse_args(argv=None):
    p = stage_parser("captions", __doc__)
    p.add_argument("--concepts", required=True, help="Concept bank (see data_gen.concepts).")
    p.add_argument("--out", required=True, help="Output folder for captions-*.jsonl.")
    p.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub name or local path.")
    p.add_argument("--captions-per-concept", type=int, default=1, help="K (default 1).")
    p.add_argument("--seed", type=int, default=0, help="Base of the per-caption seeds.")
    p.add_argument("--batch-size", type=int, default=None,
                   help="Prompts per generate call (default: vllm 1024, transformers 8).")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm only.")
    p.add_argument("--dtype", default=None, help="Default: vllm float16 (SynthCLIP); "
                   "transformers float32 on CPU, bfloat16 on CUDA.")
    p.add_argument("--device", default=None, help="transformers only (default cuda if any).")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--presence-penalty", type=float, default=1.0)
    p.add_argument("--frequency-penalty", type=float, default=1.0)
    add_worker_args(p)
    add_engine_args(p)
    args = p.parse_args(argv)
    check_engine_args(p, args)
    if args.engine == "ray" and args.worker_index:
        p.error("with --engine ray one job writes every one of the --num-workers files; "
                "leave --worker-index out")
    return args


def worker_jobs(args, concepts: list, worker_index: int) -> list:
    """(concept_index, concept, k, seed) of every caption worker `worker_index` asks for."""
    mine = worker_items(list(enumerate(concepts)), worker_index, args.num_workers)
    return [(i, c, k, caption_seed(args.seed, i, k))
            for i, c in mine for k in range(args.captions_per_concept)]


def batch_size(args) -> int:
    return args.batch_size or (1024 if args.backend == "vllm" else 8)


def batches_of(args, jobs: list) -> list:
    bs = batch_size(args)
    return [jobs[s:s + bs] for s in range(0, len(jobs), bs)]


def make_backend(args):
    return (VllmBackend if args.backend == "vllm" else TransformersBackend)(args)


def output_path(args, worker_index: int) -> Path:
    return Path(args.out) / f"captions-{worker_suffix(worker_index, args.num_workers)}.jsonl"


def claim_output(args) -> None:
    """Records what OUT's captions are made of; refuses an OUT made of other input/settings."""
    settings = {k: v for k, v in vars(args).items()  # less those that do not change captions
                if k not in ("out", "worker_index", "device", "batch_size",
                             "tensor_parallel_size", *ENGINE_ARGS)}
    fingerprint.claim(Path(args.out) / ".fingerprint-captions.json",
                      {**settings, "concepts": fingerprint.file_stamp(args.concepts)},
                      stage="captions", fix="use another --out, or delete it to caption again")


def write_worker(args, worker_index: int, batches: list, texts: list) -> None:
    """Cleans the generated `texts` (one list per batch of `batches`) into rows and writes the
    worker's stats, then its .jsonl (last: its existence marks this worker done)."""
    rows, stats = [], {"requested": sum(map(len, batches)), "multiline": 0, "empty": 0}
    for batch, batch_texts in zip(batches, texts):
        for (i, concept, k, seed), text in zip(batch, batch_texts):
            caption = clean_llm_caption(text)
            if caption is None or not caption:
                stats["multiline" if caption is None else "empty"] += 1
                continue
            rows.append({"concept": concept, "caption": caption, "seed": seed,
                         "model": args.model, "concept_index": i, "k": k})
    stats["written"] = len(rows)
    out = output_path(args, worker_index)
    with atomic_path(out.with_name(out.name.replace(".jsonl", ".stats.json"))) as tmp:
        tmp.write_text(json.dumps(stats, indent=1) + "\n")
    write_jsonl_atomic(out, rows)
    print(f"captions: {stats} -> {out}", file=sys.stderr)


class RayGenerator:
    """--engine ray's actor: one backend for its life; a batch of [concept, seed] in (JSON),
    the generated texts out (JSON)."""

    def __init__(self, args):
        self.backend = make_backend(args)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        texts = []
        for payload in batch["payload"]:
            requests = json.loads(payload)
            texts.append(json.dumps(self.backend.generate(
                [prompt_ids(self.backend.tokenizer, concept) for concept, _ in requests],
                [seed for _, seed in requests]), ensure_ascii=False))
        return {"worker": batch["worker"], "batch": batch["batch"],
                "texts": np.asarray(texts, dtype=object)}


def run_ray(args, concepts: list) -> None:
    """Every missing worker file as one Ray Data job (data_gen.engine.ray_map): the local
    engine's batches of those workers go to RayGenerator actors; a file is written by the
    driver, as the local engine writes it, once its last batch is back."""
    from data_gen.progress import Progress
    pending = [w for w in range(args.num_workers) if not output_path(args, w).exists()]
    print(f"captions: ray: {args.num_workers - len(pending)} of {args.num_workers} worker "
          "files already written", flush=True)
    batches = {w: batches_of(args, worker_jobs(args, concepts, w)) for w in pending}
    for w in [w for w in pending if not batches[w]]:  # more workers than concepts
        write_worker(args, w, [], [])
    items = [{"worker": w, "batch": b, "payload": json.dumps(
                  [[concept, seed] for _, concept, _, seed in batch], ensure_ascii=False)}
             for w in pending for b, batch in enumerate(batches[w])]
    if not items:
        return
    texts = {w: {} for w in pending}  # worker -> batch -> texts, until its file is written
    rows = ray_map(args, items, RayGenerator, {"args": for_actors(args, "model")}, "captions")
    with Progress("captions (ray)", len(items), "batches") as bar:
        for row in rows:
            w, b = int(row["worker"]), int(row["batch"])
            texts[w][b] = json.loads(row["texts"])
            if len(texts[w]) == len(batches[w]):
                done = texts.pop(w)
                write_worker(args, w, batches[w], [done[k] for k in range(len(batches[w]))])
            bar.update()


def main(argv=None):
    args = parse_args(argv)
    cli_paths.input_file("captions", "--concepts", args.concepts)
    cli_paths.output_dir("captions", "--out", args.out)
    concepts = load_bank(args.concepts, dedup=False)  # index = line of a bank from data_gen.concepts
    check_worker_args(args.worker_index, args.num_workers)
    claim_output(args)  # an existing output is skipped: only if made from this bank and settings
    if args.engine == "ray":
        return run_ray(args, concepts)
    out = output_path(args, args.worker_index)
    if out.exists():
        print(f"captions: {out} exists, skipping", file=sys.stderr)
        return
    backend = make_backend(args)
    batches = batches_of(args, worker_jobs(args, concepts, args.worker_index))
    suffix = worker_suffix(args.worker_index, args.num_workers)
    desc = f"captions {suffix} (batches of {batch_size(args)})"
    texts = [backend.generate([prompt_ids(backend.tokenizer, c) for _, c, _, _ in batch],
                              [s for *_, s in batch])
             for batch in progress(batches, len(batches), desc)]
    write_worker(args, args.worker_index, batches, texts)


if __name__ == "__main__":
    main()
