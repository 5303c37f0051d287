"""data_gen as a whole: the CPU chain end to end into the trainer, killed-and-rerun stages, and
balancing against an independent reference implementation.

Stages run as subprocesses (`python -m data_gen.STAGE`), as they do on real workers. The tiny
random Llama (+ word-level chat tokenizer) and the tiny random Stable Diffusion pipeline come from
the helpers of tests/test_data_gen_text.py and tests/test_data_gen_images.py (no hub access).
"""
import io
import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from data_gen import balance
from data_gen import images as images_stage
from synthclip_jax.data.shard_files import TFRecordShards
from synthclip_jax.data.tfrecord import decode_example
from tests.test_data_gen_images import tar_members, tiny_pipeline
from tests.test_data_gen_text import caption_args, tiny_model  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def run(module, *args, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", f"data_gen.{module}", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"data_gen.{module} {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start(module, *args):
    return subprocess.Popen([sys.executable, "-m", f"data_gen.{module}", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc, condition, timeout=120.0, poll=0.002):
    """SIGKILLs `proc` as soon as condition() holds; returns True if it was killed while still
    running, False if it had exited by itself first. Always reaps the process."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if condition():
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return True
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.args} neither reached the kill point nor exited")
            time.sleep(poll)
        return False
    finally:
        if proc.poll() is None:  # never leave an orphan behind, whatever happened above
            proc.kill()
            proc.wait(timeout=30)


def visible_files(folder: Path) -> dict:
    """name -> bytes of every non-hidden file (atomic writes use hidden `.NAME.tmp-PID`)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def temp_leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def pair_indices(folder: Path) -> list:
    out = []
    for f in sorted(folder.glob("pairs-*.tar")):
        for name, data in tar_members(f).items():
            if name.endswith(".json"):
                out.append(json.loads(data)["index"])
    return out


# ---- 1. the whole chain on CPU, into the trainer ----

# Captions from a random-weight model are random strings over the tiny vocabulary; a few may
# happen to contain "cat" or "dog" as a word, but nothing guarantees it, and if balancing (which
# drops unmatched captions) kept none the chain could not go on. So a hand-written
# caption file in the captions stage's row format is added to the captions folder beside the
# model's shards: balance reads both (same glob), and these rows match concepts of the bank.
HANDWRITTEN = ["a cat sleeps on a red sofa", "a brown dog runs in the park",
               "a white horse stands in a field.", "a cow, grazing near a barn",
               "two sheep on a green hill", "a goat climbs a rock", "a pig in the mud",
               "a rabbit eats a carrot"]


@pytest.mark.slow
def test_whole_chain_cpu_into_trainer(tiny_model, tmp_path):  # noqa: F811
    import jax
    import numpy as np

    from synthclip_jax.train import loop
    from tests.test_train_parallel import tiny_train_config

    # concepts: the built-in bank, then an 8-concept subset of it (through the stage again)
    run("concepts", "--builtin", "--out", tmp_path / "builtin.txt")
    full = (tmp_path / "builtin.txt").read_text().splitlines()
    assert len(full) >= 300
    (tmp_path / "subset.txt").write_text("\n".join(full[:8]) + "\n")
    bank = tmp_path / "concepts.txt"
    run("concepts", "--input", tmp_path / "subset.txt", "--out", bank)
    concepts = bank.read_text().splitlines()
    assert concepts == full[:8]

    # captions: tiny random Llama, 2 workers
    caps = tmp_path / "caps"
    for i in range(2):
        run("captions", "--concepts", bank, "--out", caps, "--backend", "transformers",
            "--model", tiny_model, "--captions-per-concept", 1, "--seed", 0, "--max-tokens", 12,
            "--batch-size", 4, "--worker-index", i, "--num-workers", 2)
    model_rows = [json.loads(x) for f in sorted(caps.glob("captions-*.jsonl"))
                  for x in f.read_text().splitlines()]
    stats = [json.loads(p.read_text()) for p in sorted(caps.glob("*.stats.json"))]
    assert sum(s["requested"] for s in stats) == 8 and len(stats) == 2
    assert sum(s["written"] for s in stats) == len(model_rows)
    hand = [{"concept": c, "caption": text, "seed": -1, "model": "handwritten",
             "concept_index": concepts.index(c), "k": 0}
            for c, text in zip(concepts, HANDWRITTEN)]
    assert all(f" {r['concept']} " in balance.spacing(r["caption"]) for r in hand)
    (caps / "handwritten.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hand))

    # balance (t = 10 > every count here, so every matched caption is kept)
    bal = tmp_path / "bal"
    run("balance", "--captions", f"{caps}/*.jsonl", "--concepts", bank, "--out", bal,
        "--t", 10, "--seed", 0)
    kept = [json.loads(x) for x in (bal / "kept.jsonl").read_text().splitlines()]
    kept_captions = [r["caption"] for r in kept]
    assert set(HANDWRITTEN) <= set(kept_captions)
    assert len(kept) >= 8
    print(f"chain: {len(model_rows)} model captions, {len(kept) - len(hand)} of them kept")
    bstats = json.loads((bal / "balance_stats.json").read_text())
    assert bstats["read"] == len(model_rows) + len(hand) and bstats["kept"] == len(kept)

    # images: tiny random SD pipeline, 64 px generated, 2 DDIM steps, saved at 32 px
    model = tiny_pipeline(tmp_path / "tiny-sd")
    pairs = tmp_path / "pairs"
    run("images", "--captions", bal / "kept.jsonl", "--out", pairs, "--backend", "diffusers",
        "--model", model, "--height", 64, "--width", 64, "--save-size", 32, "--steps", 2,
        "--chunk-size", 4, "--batch-size", 4, "--dtype", "float32", "--device", "cpu")
    assert sorted(pair_indices(pairs)) == list(range(len(kept)))

    # write: TFRecord shards + manifest
    shards = tmp_path / "shards"
    run("write", "--pairs", f"{pairs}/pairs-*.tar", "--out", shards, "--num-shards", 2,
        "--manifest-extra", bal / "balance_stats.json", "--contact-sheet", 4, "--concepts", bank)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["num_records"] == len(kept)
    assert manifest["concept_bank"]["entries"] == len(concepts)
    assert manifest["stages"]["balance_stats"]["kept"] == len(kept)
    assert (shards / "contact_sheet.png").exists()

    # the trainer's reader sees every kept caption once, with a decodable 32 px JPEG
    pattern = str(shards / "*.tfrecord")
    ds = TFRecordShards(pattern)
    assert len(ds) == len(kept)
    examples = [decode_example(ds[i]) for i in range(len(ds))]
    # data_gen.images normalises whitespace (" ".join(text.split())) on top of balance's
    # cleaning, so a model caption with a double space is stored with a single one
    assert sorted(e["captions"][0] for e in examples) == sorted(
        images_stage.flatten_caption(c) for c in kept_captions)
    # each record's concept ids are the bank lines of the concepts balance matched
    assert sorted((e["captions"][0], [concepts[i] for i in e["concepts"]]) for e in examples) == \
        sorted((images_stage.flatten_caption(r["caption"]), r["concepts"]) for r in kept)
    assert all(e["concepts"] for e in examples)
    for e in examples:
        with Image.open(io.BytesIO(e["image"])) as im:
            assert im.format == "JPEG" and im.size == (32, 32)
        assert e["source"] == "model:ddim2:g2.0"

    # and a real (tiny) training run on those shards
    config = tiny_train_config("softmax", (1, 1, 1))
    config.model.text.update(vocab_size=49408, context_length=16)
    config.data.update(source="tfrecord", train=pattern, image_size=32, num_workers=0)
    config.batch_size, config.total_steps = 4, 2
    config.checkpoint.every_steps, config.log.every_steps = 0, 1
    assert len(kept) >= config.batch_size
    metrics = loop.train(config, tmp_path / "run", devices=jax.devices()[:1])
    assert np.isfinite(metrics["loss"])
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)


# ---- 2. killed stages, rerun: the outputs of an uninterrupted run, nothing missing or doubled ----

N_SHAPES, SHAPES_ARGS = 400, ("--chunk-size", 8, "--save-size", 64)


@pytest.fixture(scope="module")
def shape_pairs(tmp_path_factory):
    """An uninterrupted shapes images run (50 chunks of 8)."""
    out = tmp_path_factory.mktemp("shapes") / "pairs"
    run("images", "--shapes", N_SHAPES, "--out", out, *SHAPES_ARGS)
    return out


def test_images_killed_then_rerun_equals_uninterrupted(shape_pairs, tmp_path):
    ref = visible_files(shape_pairs)
    assert len([n for n in ref if n.startswith("pairs-")]) == 50
    assert sorted(pair_indices(shape_pairs)) == list(range(N_SHAPES))
    out = tmp_path / "pairs"
    args = ("--shapes", N_SHAPES, "--out", out, *SHAPES_ARGS)
    killed = kill_when(start("images", *args), lambda: any(out.glob("pairs-*.tar")))
    partial = visible_files(out) if out.exists() else {}
    done = [n for n in partial if n.startswith("pairs-")]
    if killed:  # what the killed run left is complete chunks only, each the final bytes
        assert 0 < len(done) < 50, done
    for name, data in partial.items():
        assert data == ref[name], name
    proc = run("images", *args)
    assert f"{len(done)} already done" in proc.stdout
    assert visible_files(out) == ref  # every pairs-*.tar + images_settings.json, byte for byte
    assert sorted(pair_indices(out)) == list(range(N_SHAPES))  # none missing or doubled
    # A SIGKILLed worker cannot remove its temporary file; it is hidden (".pairs-C.tar.tmp-PID"),
    # so no pairs-*.tar glob (write's, import_pairs') can pick up a partial tar.
    assert not [p for p in out.glob("pairs-*.tar") if not p.name[len("pairs-"):-4].isdigit()]
    assert temp_leftovers(out) == []  # the rerun of its chunk removed it
    print(f"images killed mid-run: {killed} after {len(done)}/50 chunks; "
          f"temp leftovers: {temp_leftovers(out)}")


@pytest.mark.slow
def test_captions_worker_killed_then_rerun_equals_uninterrupted(tiny_model, tmp_path):  # noqa: F811
    bank = tmp_path / "bank.txt"
    bank.write_text("cat\ndog\nred ball\npark\nblue sky\nmat\n")

    def args(out, i):
        return caption_args(tiny_model, bank, out, "--worker-index", i, "--num-workers", 2,
                            "--batch-size", 1)

    ref = tmp_path / "ref"
    run("captions", *args(ref, 0))
    t0 = time.monotonic()
    run("captions", *args(ref, 1))
    worker_time = time.monotonic() - t0

    # Worker 0 has finished (its files, as written by the uninterrupted run, the seeds making
    # them the same); worker 1 is killed part-way: a shard is only written at its end, so any
    # kill point before that is equivalent; 0.4 of its uninterrupted wall time lands in the
    # model loading / generation (after it, the kill may come during interpreter teardown).
    out = tmp_path / "out"
    out.mkdir()
    for name in ("captions-00000-of-00002.jsonl", "captions-00000-of-00002.stats.json"):
        (out / name).write_bytes((ref / name).read_bytes())
    t0 = time.monotonic()
    killed = kill_when(start("captions", *args(out, 1)),
                       lambda: time.monotonic() - t0 > 0.4 * worker_time)
    print(f"captions worker 1 killed mid-run: {killed}; left "
          f"{sorted(visible_files(out))}; temp leftovers: {temp_leftovers(out)}")
    ref_files = visible_files(ref)
    # A shard is written whole at the end (stats first, then the .jsonl, each by rename): what
    # the killed worker left under a final name is final (it may have died after the rename,
    # during interpreter teardown).
    for name, data in visible_files(out).items():
        assert data == ref_files[name], name
    proc = run("captions", *args(out, 0))  # the rerun of the launch script: 0 is skipped
    assert "skipping" in proc.stderr
    run("captions", *args(out, 1))
    assert sorted(ref_files) == [f"captions-0000{i}-of-00002.{ext}"
                                 for i in range(2) for ext in ("jsonl", "stats.json")]
    assert visible_files(out) == ref_files
    rows = [json.loads(x) for name, data in ref_files.items() if name.endswith(".jsonl")
            for x in data.decode().splitlines()]
    keys = [(r["concept_index"], r["k"]) for r in rows]
    assert len(keys) == len(set(keys)) and len(rows) >= 12  # 6 concepts x 3, a few may drop


def test_write_killed_then_rerun_equals_uninterrupted(shape_pairs, tmp_path):
    pattern = f"{shape_pairs}/pairs-*.tar"
    common = ("--pairs", pattern, "--num-shards", 3, "--contact-sheet", 4)
    ref = tmp_path / "ref"
    run("write", *common, "--out", ref)
    ref_files = visible_files(ref)
    assert sorted(ref_files) == sorted(
        ["contact_sheet.png", "manifest.json", "tfrecord_index.npz"]
        + [f"synth-0000{s}-of-00003.tfrecord{x}" for s in range(3) for x in ("", ".index")])

    # The stage takes well under a second, so kill it at the first sign of work (its
    # temporary shard files); retry a few times until a partial state is caught, and check the
    # rerun in any case.
    partial_seen = False
    for attempt in range(5):
        out = tmp_path / f"out{attempt}"
        killed = kill_when(start("write", *common, "--out", out),
                           lambda: out.exists() and any(".tmp-" in p.name for p in out.iterdir()))
        if killed:
            assert not (out / "manifest.json").exists()
            partial_seen = True
            break
    left = visible_files(out) if out.exists() else {}
    for name, data in left.items():  # whatever the killed run left under a final name is final
        assert data == ref_files[name], name
    run("write", *common, "--out", out)
    assert visible_files(out) == ref_files  # shards, indexes, manifest, contact sheet
    assert temp_leftovers(out) == []  # the killed run's temporaries went with the rerun
    ds = TFRecordShards(str(out / "*.tfrecord"))
    keys = [decode_example(ds[i])["key"] for i in range(len(ds))]
    assert len(keys) == len(set(keys)) == N_SHAPES
    print(f"write killed mid-run: {partial_seen}; temp leftovers: {temp_leftovers(out)}")


# ---- 3. balancing equals a direct reference implementation ----

def reference_balance(rows, bank, t, seed):
    """SynthCLIP/MetaCLIP balancing, written out plainly: clean, drop multi-line captions,
    dedup exact captions (first copy wins), substring-match space-padded text, count entries
    over unique captions, keep with p = t / max(count, t) per matched entry, any draw passing."""
    unique = {}
    for row in rows:
        text = row["caption"]
        if "\n" in text:
            continue
        text = text.replace('"', "").strip(" ").strip("\n")
        unique.setdefault(text, row)
    spaced = {}
    for text in unique:
        s = f" {text} "
        for p in [",", ".", ";", ":", "?", "!", "`"]:
            s = s.replace(p, f" {p} ")
        for c in ["\t", "\n", "\r"]:
            s = s.replace(c, " ")
        spaced[text] = s
    matches = {text: [i for i, e in enumerate(bank) if f" {e} " in s]
               for text, s in spaced.items()}
    count = [sum(i in m for m in matches.values()) for i in range(len(bank))]
    kept = {}
    for text, matched in matches.items():
        # data_gen.balance's per-caption stream: random.Random(f"{seed}\0{caption}") (inline in
        # balance.keep), one draw per matched entry in bank order
        rng = random.Random(f"{seed}\0{text}")
        draws = [rng.random() < t / max(count[e], t) for e in matched]
        if any(draws):
            kept[text] = ([bank[e] for e in matched], unique[text]["seed"])
    return kept, {bank[e]: c for e, c in enumerate(count) if c}


def test_balance_matches_reference_implementation(tmp_path):
    bank = ["cat", "Cat", "dog", "hot dog", "red ball", "park", "St. Louis", "sky", "a", "ball",
            "blue", "mat"]
    rng = random.Random(1)
    words = ["a", "the", "cat", "Cat", "cats", "dog", "hot", "red", "ball", "balls", "park",
             "St.", "Louis", "sky", "blue", "mat", "on", "in", "under", ",", ".", "!", "?",
             "`", ";", ":", '"', "\t", "\n", "\r"]
    captions = []
    for _ in range(200):
        n = rng.randint(1, 9)
        text = "".join(rng.choice(words) + rng.choice([" ", " ", " ", ""]) for _ in range(n))
        captions.append(text)
    captions += captions[:15]  # exact duplicates
    captions += [f' "{c}" ' for c in captions[20:25]]  # duplicates once cleaned
    rows = [{"caption": c, "concept": "x", "seed": i, "model": "m"} for i, c in enumerate(captions)]
    caps = tmp_path / "caps"
    caps.mkdir()
    (caps / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:110]))
    (caps / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[110:]))
    (tmp_path / "bank.txt").write_text("\n".join(bank) + "\n")
    t, seed = 8, 5
    expected, expected_counts = reference_balance(rows, bank, t, seed)
    # the case is not trivial: entries above t are subsampled, some captions kept, some not
    assert max(expected_counts.values()) > 3 * t and 10 < len(expected) < 150

    common = ["--captions", f"{caps}/*.jsonl", "--concepts", str(tmp_path / "bank.txt"),
              "--t", str(t), "--seed", str(seed)]
    balance.main([*common, "--out", str(tmp_path / "one")])
    got = [json.loads(x) for x in (tmp_path / "one/kept.jsonl").read_text().splitlines()]
    # kept captions, their matched entries, and the first copy's source row (its "seed")
    assert {r["caption"]: (r["concepts"], r["seed"]) for r in got} == expected
    assert len(got) == len(expected)  # no caption twice
    assert json.loads((tmp_path / "one/entry_counts.json").read_text()) == expected_counts
    # sharded (2 workers, count then sample) gives the same kept set
    for phase in ("count", "sample"):
        for i in range(2):
            balance.main([*common, "--out", str(tmp_path / "two"), "--phase", phase,
                          "--worker-index", str(i), "--num-workers", "2"])
    got2 = [json.loads(x) for f in sorted((tmp_path / "two").glob("kept-*.jsonl"))
            for x in f.read_text().splitlines()]
    assert {r["caption"]: (r["concepts"], r["seed"]) for r in got2} == expected and len(got2) == len(got)
