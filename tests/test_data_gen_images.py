"""data_gen.images (shapes and tiny random diffusers backends) and data_gen.write."""
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_gen import images as images_stage
from synthclip_jax.data.shard_files import TFRecordShards
from synthclip_jax.data.tfrecord import decode_example

ROOT = Path(__file__).resolve().parents[1]


def run(module, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(f"{module} {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tar_members(path) -> dict:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def shape_pairs(out, n=10, *extra, index_flag="--worker-index", count_flag="--num-workers"):
    for i in range(2):
        run("data_gen.images", "--shapes", n, "--out", out, "--chunk-size", 4,
            "--save-size", 64, index_flag, i, count_flag, 2, *extra)


def test_help():
    for module in ("data_gen.images", "data_gen.write"):
        proc = run(module, "--help")
        assert "--worker-index" in proc.stdout and "--num-workers" in proc.stdout
    # images keeps the old spellings of its worker flags; write's --num-shards counts shards
    assert "--shard-index is a deprecated alias" in run("data_gen.images", "--help").stdout


def test_old_worker_flags_are_aliases(tmp_path):
    shape_pairs(tmp_path / "new", 6)
    shape_pairs(tmp_path / "old", 6, index_flag="--shard-index", count_flag="--num-shards")
    new, old = (sorted(p.name for p in (tmp_path / d).glob("pairs-*.tar")) for d in ("new", "old"))
    assert new == old and new
    for name in new:
        assert tar_members(tmp_path / "new" / name) == tar_members(tmp_path / "old" / name)


def test_shapes_two_workers_skip_and_reproduce(tmp_path):
    out = tmp_path / "pairs"
    shape_pairs(out)
    files = sorted(p.name for p in out.glob("pairs-*.tar"))
    assert files == ["pairs-00000.tar", "pairs-00001.tar", "pairs-00002.tar"]
    samples = {}
    for f in files:
        members = tar_members(out / f)
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                key = name[:-5]
                assert members[f"{key}.txt"].decode() == meta["caption"]
                # the records keep the backend's old name (see data_gen/images.py Shapes)
                assert meta["source"] == "procedural" and meta["key"] == key
                assert Image.open(io.BytesIO(members[f"{key}.jpg"])).size == (64, 64)
                samples[meta["index"]] = meta["caption"]
    assert sorted(samples) == list(range(10))
    assert all(c.endswith("background") for c in samples.values())

    before = {f: (out / f).stat().st_mtime_ns for f in files}
    # --procedural/--backend procedural: the old spellings of --shapes, still accepted
    proc = run("data_gen.images", "--procedural", 10, "--backend", "procedural", "--out", out,
               "--chunk-size", 4, "--save-size", 64)
    assert "3 already done" in proc.stdout
    assert before == {f: (out / f).stat().st_mtime_ns for f in files}

    data = {f: (out / f).read_bytes() for f in files}
    for f in files:
        (out / f).unlink()
    shape_pairs(out)
    assert data == {f: (out / f).read_bytes() for f in files}

    # Other settings into the same folder are refused rather than mixed in.
    proc = run("data_gen.images", "--shapes", 10, "--out", out, "--chunk-size", 4,
               "--save-size", 64, "--seed", 7, check=False)
    assert proc.returncode != 0 and "other settings" in proc.stderr


def test_prompt_sets(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("goldfish\ncrane bird\n")
    args = images_stage.parse_args(["--prompts", "classnames", str(names), "--out", "x"])
    assert [r["caption"] for r in images_stage.load_rows(args)] == ["goldfish", "crane bird"]
    args = images_stage.parse_args(["--prompts", "templates", str(names), "--out", "x"])
    rows = images_stage.load_rows(args)
    assert len(rows) == 2 * len(images_stage.TEMPLATES)
    assert rows[0]["caption"] == "itap of a goldfish." and rows[0]["classname"] == "goldfish"
    assert images_stage.flatten_caption(' a "red"\tcat\n ') == "a red cat"
    assert images_stage.image_seed(42, 3) == images_stage.image_seed(42, 3)
    assert images_stage.image_seed(42, 3) != images_stage.image_seed(43, 3)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_write_shards_manifest_contact_sheet(tmp_path):
    pairs = tmp_path / "pairs"
    shape_pairs(pairs)
    captions = {}
    for f in pairs.glob("pairs-*.tar"):
        for name, data in tar_members(f).items():
            if name.endswith(".json"):
                meta = json.loads(data)
                captions[meta["key"]] = meta["caption"]
    stats = tmp_path / "balance_stats.json"
    stats.write_text('{"kept": 10}')
    out = tmp_path / "tfr"
    run("data_gen.write", "--pairs", f"{pairs}/pairs-*.tar", "--out", out, "--num-shards", 3,
        "--manifest-extra", stats, "--contact-sheet", 5)
    ds = TFRecordShards(str(out / "*.tfrecord"))
    assert len(ds) == 10
    got = {}
    for i in range(len(ds)):
        ex = decode_example(ds[i])
        got[ex["key"]] = ex["captions"][0]
        assert ex["source"] == "procedural"
        # the shapes' short web caption (CLIPS's second role): colours and shapes only
        web = ex["web_caption"].split()
        assert web and len(web) < len(ex["captions"][0].split())
        assert set(web) <= set(ex["captions"][0].split())
        assert Image.open(io.BytesIO(ex["image"])).format == "JPEG"
    assert got == captions
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_records"] == 10 and manifest["stages"] == {"balance_stats": {"kept": 10}}
    assert [s["file"] for s in manifest["shards"]] == [
        f"synth-0000{i}-of-00003.tfrecord" for i in range(3)]
    for s in manifest["shards"]:
        assert s["sha256"] == sha256(out / s["file"])
        assert s["index_sha256"] == sha256(out / f"{s['file']}.index")
    assert manifest["settings"][0]["settings"]["backend"] == "procedural"
    assert manifest["sources"] == {"procedural": 10}
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.size[0] > 100

    # Idempotent, and deterministic: a second output folder gets identical shards.
    proc = run("data_gen.write", "--pairs", f"{pairs}/pairs-*.tar", "--out", out,
               "--num-shards", 3)
    assert "nothing to do" in proc.stdout
    out2 = tmp_path / "tfr2"
    for w in range(2):  # two workers split the shards; the second writes the manifest
        run("data_gen.write", "--pairs", f"{pairs}/pairs-*.tar", "--out", out2,
            "--num-shards", 3, "--worker-index", w, "--num-workers", 2)
    for s in manifest["shards"]:
        assert sha256(out2 / s["file"]) == s["sha256"]
    assert (out2 / "manifest.json").exists()


TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def tiny_pipeline(path: Path) -> Path:
    """A random-weight StableDiffusionPipeline built from configs (no hub), saved to path."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    # every byte a token, no merges
    from tools.bench.device_check_gen import assemble_pipeline, byte_vocab
    vocab = byte_vocab()
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"),
                                           model_max_length=77)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=vocab[TOKENS[0]], eos_token_id=vocab[TOKENS[1]],
        pad_token_id=vocab[TOKENS[1]], hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab)))
    pipe = assemble_pipeline(vae, text, tokenizer, unet)  # SD v1.5's DDIM scheduler config
    pipe.save_pretrained(path / "model")
    return path / "model"


def pixels(jpeg: bytes):
    import numpy as np
    return np.asarray(Image.open(io.BytesIO(jpeg)), dtype=np.int16)


@pytest.mark.slow
def test_diffusers_tiny_random_pipeline(tmp_path):
    model = tiny_pipeline(tmp_path / "tiny-sd")
    captions = tmp_path / "kept.jsonl"
    rows = [{"caption": f'a "photo" of object {i}', "concept_ids": [i]} for i in range(5)]
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--captions", captions, "--model", model, "--height", 64, "--width", 64,
              "--save-size", 32, "--steps", 2, "--guidance", 2.0, "--chunk-size", 3,
              "--dtype", "float32"]
    run("data_gen.images", *common, "--out", tmp_path / "a", "--batch-size", 2)
    # The other runs in-process (torch is imported here already): worker 1 of 2 with the same
    # batching, and worker 0 of 2 with another batch size.
    common = [str(x) for x in common]
    images_stage.main([*common, "--out", str(tmp_path / "b"), "--batch-size", "2",
                       "--num-workers", "2", "--worker-index", "1"])
    images_stage.main([*common, "--out", str(tmp_path / "c"), "--batch-size", "1",
                       "--num-workers", "2", "--worker-index", "0"])
    a, b, c = ({} for _ in range(3))
    for folder, got in (("a", a), ("b", b), ("c", c)):
        for f in sorted((tmp_path / folder).glob("pairs-*.tar")):
            got.update(tar_members(f))
    assert len(a) == 15 and len(b) == 6 and len(c) == 9
    # Same caption index and batching -> same bytes, in another process and worker split.
    assert b == {k: v for k, v in a.items() if k in b}
    # Another batch size gives the same latents; the UNet's float32 sums may round apart.
    for k in (f"s42_{i:09d}.jpg" for i in range(3)):
        assert abs(pixels(a[k]) - pixels(c[k])).max() <= 2
    assert abs(pixels(a["s42_000000000.jpg"]) - pixels(a["s42_000000001.jpg"])).mean() > 1
    meta = json.loads(a["s42_000000003.json"])
    assert meta["caption"] == "a photo of object 3" and meta["input"] == rows[3]
    assert meta["source"] == "model:ddim2:g2.0"
    assert meta["settings"]["steps"] == 2 and meta["settings"]["guidance"] == 2.0
    assert Image.open(io.BytesIO(a["s42_000000003.jpg"])).size == (32, 32)

    out = tmp_path / "tfr"
    run("data_gen.write", "--pairs", f"{tmp_path / 'a'}/pairs-*.tar", "--out", out,
        "--num-shards", 2)
    ds = TFRecordShards(str(out / "*.tfrecord"))
    examples = sorted((decode_example(ds[i]) for i in range(len(ds))), key=lambda e: e["key"])
    assert [e["concepts"] for e in examples] == [[i] for i in range(5)]
    assert examples[0]["source"] == "model:ddim2:g2.0"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"][0]["settings"]["model"] == str(model)


def test_concept_names_become_bank_ids():
    from data_gen.write import concept_ids_of
    bank = {"dog": 0, "red ball": 1}
    assert concept_ids_of({"concept_ids": [5, 2]}, None, "x") == [5, 2]
    assert concept_ids_of({"concepts": ["red ball", "dog"]}, bank, "x") == [1, 0]
    assert concept_ids_of({"concepts": ["dog"]}, None, "x") is None  # counted, not stored
    assert concept_ids_of({}, bank, "x") == []
    with pytest.raises(SystemExit, match=r"pairs-0.tar: sample 'k'.*\['cat'\].*--concepts"):
        concept_ids_of({"concepts": ["dog", "cat"]}, bank, "pairs-0.tar: sample 'k'")
