"""Does CLIPS's captioner / second caption help? configs/clips_cpu.py three ways, same seed,
data and steps, evaluated on held-out pairs.

  python -m tools.bench.clips_ablation --out /tmp/clips_ablation [--steps 600]
      [--num-train 8000] [--parallel 3]

1. Renders the shapes demo data with two caption roles once (`data_gen`'s procedural renderer,
   as configs/clips_cpu.py does): training shards, `--num-retrieval` held-out retrieval pairs
   (render indices after the training ones: no held-out image is in training) and the zero-shot
   folder of colour/shape pairs training never shows.
2. Trains a small CLIPS WordPiece vocab.txt on the training captions (both roles) with
   `tokenizers`' WordPiece trainer, special ids laid out as bert-base-uncased's ([PAD]=0,
   [unused0]=1=BOS, [unused1]=2=EOS, [CLS]=101), and runs with
   `model.text.tokenizer=clips_wordpiece` on it: a ~200-word vocabulary instead of BPE's 49408
   keeps the captioner's head cheap at this size.
3. Trains (`python -m synthclip_jax.main`, the trainer's own eval hook at the last step):
     clips          web + partial synthetic caption, captioner   (the whole config)
     no_captioner   web + partial synthetic caption              (model.captioner.enabled=False)
     no_second      web caption only, captioner                  (loss.two_captions=False)
   and prints first/last caption and contrastive losses (mean of the first/last 4 logged rows)
   and the held-out retrieval recall@1/5 (image->text, text->image) and zero-shot top-1 of each.
"""
import argparse
import json
import os
import sys

from etils import epath

from tools.bench.jobs import run_all

VARIANTS = {  # name: config overrides
    "clips": {},
    "no_captioner": {"model.captioner.enabled": False},
    "no_second": {"loss.two_captions": False},
}
SPECIALS = (["[PAD]"] + [f"[unused{i}]" for i in range(99)]
            + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"])  # bert-base-uncased's ids 0..103


def training_captions(pattern):
    from synthclip_jax.data.shard_files import TFRecordShards
    from synthclip_jax.data.tfrecord import decode_example

    shards = TFRecordShards(pattern)
    for i in range(len(shards)):
        example = decode_example(shards[i])
        yield from example["captions"]
        if example["web_caption"]:
            yield example["web_caption"]


def build_vocab(pattern, out_dir) -> str:
    """A WordPiece vocab.txt of the training captions, CLIPS's special-id layout."""
    from tokenizers import BertWordPieceTokenizer
    from synthclip_jax.data import clips_tokenizer as ct
    path = os.path.join(out_dir, "vocab.txt")
    if os.path.exists(path):
        return path
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(training_captions(pattern), vocab_size=1000, min_frequency=1,
                            special_tokens=SPECIALS, wordpieces_prefix="##")
    vocab = tok.get_vocab()
    assert vocab["[CLS]"] == ct.CLS_ID and vocab["[unused0]"] == ct.BOS_ID, "special layout"
    tok.save_model(out_dir)
    return path


def prepare(args):
    from synthclip_jax.data.shapes_demo import ensure_demo_data
    from configs.clips_cpu import get_config
    p = get_config().data.procedural
    paths = ensure_demo_data(os.path.join(args.out, "data"), seed=p.seed,
                             image_size=p.image_size, num_train=args.num_train,
                             num_retrieval=args.num_retrieval,
                             zeroshot_per_class=p.zeroshot_per_class, web_captions=True)
    vocab = build_vocab(paths["train"], args.out)
    from synthclip_jax.data.clips_tokenizer import ClipsTokenizer
    tok = ClipsTokenizer(vocab)
    longest = max(len(ids) for ids in tok.encode_batch(list(training_captions(paths["train"]))))
    print(f"vocab {vocab}: {tok.vocab_size} tokens; longest caption {longest} word-pieces",
          flush=True)
    return paths, vocab, tok.vocab_size, longest


def command(args, name, paths, vocab, vocab_size, longest):
    overrides = {
        "seed": args.seed, "total_steps": args.steps, "warmup_steps": max(1, args.steps // 15),
        "data.train": paths["train"], "eval.retrieval": paths["retrieval"],
        "eval.zeroshot": paths["zeroshot"], "eval.every_steps": args.steps,
        "checkpoint.every_steps": 0, "log.every_steps": args.log_every,
        "data.num_workers": 0,
        "model.text.tokenizer": "clips_wordpiece", "model.text.vocab_path": vocab,
        "model.text.vocab_size": vocab_size,
        # the whole detailed caption in the text context (BOS, EOS, [CLS]) and as the target
        "model.text.context_length": longest + 3, "model.captioner.num_queries": longest + 1,
        **VARIANTS[name]}
    return [sys.executable, "-m", "synthclip_jax.main", "--config=configs/clips_cpu.py",
            f"--workdir={run_dir(args, name)}"] + [
        f"--config.{k}={v}" for k, v in overrides.items()]


def run_dir(args, name):
    return os.path.join(args.out, name if not args.seed else f"{name}_seed{args.seed}")


def summary(workdir):
    rows = [json.loads(x) for x in (epath.Path(workdir) / "metrics.jsonl").read_text()
            .splitlines()]
    evals = [json.loads(x) for x in (epath.Path(workdir) / "eval.jsonl").read_text()
             .splitlines()]
    first, last = rows[:4], rows[-4:]

    def mean(part, key):
        values = [r[key] for r in part if key in r]
        return sum(values) / len(values) if values else float("nan")
    out = {"steps": rows[-1]["step"]}
    for key in ("contrastive_loss", "caption_loss"):
        out[f"{key} first"], out[f"{key} last"] = mean(first, key), mean(last, key)
    out.update({k: v for k, v in evals[-1].items() if k != "step"})
    out["examples_per_sec"] = mean(last, "examples_per_sec")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the data, vocab and the runs")
    p.add_argument("--steps", type=int, default=600, help="train steps per run (batch 64)")
    p.add_argument("--num-train", type=int, default=8000, help="training pairs rendered")
    p.add_argument("--num-retrieval", type=int, default=256, help="held-out retrieval pairs")
    p.add_argument("--log-every", type=int, default=25, help="metrics.jsonl row every N steps")
    p.add_argument("--parallel", type=int, default=3, help="runs at a time")
    p.add_argument("--seed", type=int, default=0, help="config.seed of all three runs (their "
                   "init and data order; the data and vocab are the same for every seed)")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    paths, vocab, vocab_size, longest = prepare(args)
    names = args.only.split(",")
    run_all([(name, command(args, name, paths, vocab, vocab_size, longest),
              run_dir(args, name) + ".log") for name in names], args.parallel)
    results = {name: summary(run_dir(args, name)) for name in names}
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"\n{'':34s}" + "".join(f"{n:>14s}" for n in names))
    for k in keys:
        print(f"{k:34s}" + "".join(
            f"{results[n].get(k, float('nan')):14.4f}" for n in names))
    with open(run_dir(args, "results") + ".json", "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
