"""python -m data_gen.status: per-worker complete / partial / missing / stale after real stage
runs, one of them SIGKILLed mid-way, and the exit status."""
import os
import re

import pytest

from data_gen import captions as captions_stage
from data_gen import images as images_stage
from data_gen import import_pairs as import_stage
from data_gen import status
from data_gen import write as write_stage
from tests.test_data_gen_chain import kill_when, start
from tests.test_data_gen_text import caption_args, tiny_model  # noqa: F401 (a fixture)

N_SHAPES, CHUNK, WORKERS = 240, 4, 3  # 60 chunks: chunk c is worker c % 3's


def shapes_args(out, i):
    return ["--shapes", str(N_SHAPES), "--out", str(out), "--chunk-size", str(CHUNK),
            "--save-size", "32", "--worker-index", str(i), "--num-workers", str(WORKERS)]


def check(capsys, stage, out, n):
    """(exit status, {worker: state}, printed text) of data_gen.status."""
    code = status.main(["--stage", stage, "--out", str(out), "--num-workers", str(n)])
    text = capsys.readouterr().out
    states = {int(m[1]): m[2] for m in re.finditer(r"^worker (\d+): (\w+)", text, re.M)}
    assert len(states) == n, text
    return code, states, text


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """All three shapes workers run to completion (the reference for the other tests)."""
    out = tmp_path_factory.mktemp("status") / "pairs"
    for i in range(WORKERS):
        images_stage.main(shapes_args(out, i))
    return out


def test_images_killed_worker_then_rerun(tmp_path, capsys):
    out = tmp_path / "pairs"
    images_stage.main(shapes_args(out, 0))
    # Worker 1 is SIGKILLed once its first chunk (1) is on disk; worker 2 never starts.
    killed = kill_when(start("images", *shapes_args(out, 1)),
                       lambda: (out / "pairs-00001.tar").exists())
    own1 = [c for c in range(N_SHAPES // CHUNK) if c % WORKERS == 1]
    done1 = [c for c in own1 if (out / f"pairs-{c:05d}.tar").exists()]
    code, states, text = check(capsys, "images", out, WORKERS)
    assert code == 1
    assert states[0] == "complete" and states[2] == "missing"
    if killed and len(done1) < len(own1):  # the kill came before its last chunk
        assert states[1] == "partial"
        assert f"worker 1: partial ({len(done1)}/{len(own1)} outputs)" in text
        assert "re-run workers: 1 2 (--array=1-2)" in text
    else:
        assert states[1] == "complete" and "re-run workers: 2 (--array=2)" in text
    assert "1 complete" in text.splitlines()[-2] or "2 complete" in text.splitlines()[-2]
    for i in (1, 2):
        images_stage.main(shapes_args(out, i))
    code, states, text = check(capsys, "images", out, WORKERS)
    assert code == 0 and set(states.values()) == {"complete"}, text
    print(f"images worker 1 killed: {killed} after {len(done1)}/{len(own1)} chunks")


def test_images_other_settings_are_stale(pairs, tmp_path, capsys):
    out = tmp_path / "pairs"
    out.mkdir()
    for c in (0, 1, 2, 3):  # chunks of workers 0, 1, 2, 0 from the reference run
        (out / f"pairs-{c:05d}.tar").write_bytes((pairs / f"pairs-{c:05d}.tar").read_bytes())
    settings = (pairs / "images_settings.json").read_text()
    (out / "images_settings.json").write_text(settings.replace('"seed": 42', '"seed": 7'))
    code, states, text = check(capsys, "images", out, WORKERS)
    assert code == 1 and states == {0: "stale", 1: "stale", 2: "stale"}, text
    assert "seed: 42 -> 7" in text and "stale workers 0 1 2" in text


def test_write_missing_worker_manifest_and_stale_input(pairs, tmp_path, capsys):
    out = tmp_path / "tfr"
    common = ["--pairs", f"{pairs}/pairs-*.tar", "--out", str(out), "--num-shards", "4",
              "--num-workers", "2", "--contact-sheet", "0"]
    write_stage.main([*common, "--worker-index", "1"])
    code, states, text = check(capsys, "write", out, 2)
    assert code == 1 and states == {0: "missing", 1: "complete"}, text
    assert "worker 1: complete (4/4 outputs)" in text  # shards 1, 3 and their indexes
    write_stage.main([*common, "--worker-index", "0"])  # the last worker writes the manifest
    assert check(capsys, "write", out, 2)[0] == 0
    (out / "manifest.json").unlink()  # as if killed between the last shard and the manifest
    code, states, text = check(capsys, "write", out, 2)
    assert code == 1 and set(states.values()) == {"complete"}
    assert "manifest.json is missing" in text and "--array=0" in text
    tar = pairs / "pairs-00005.tar"
    stat = tar.stat()
    try:  # an input changed since: every worker's output is stale
        os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        code, states, text = check(capsys, "write", out, 2)
        assert code == 1 and set(states.values()) == {"stale"}
        assert f"{tar} changed" in text
    finally:
        os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_import_pairs_one_of_two_workers(pairs, tmp_path, capsys):
    out = tmp_path / "imported"
    common = ["--input", f"{pairs}/pairs-*.tar", "--out", str(out), "--num-shards", "3",
              "--num-workers", "2", "--quiet"]
    import_stage.main([*common, "--worker-index", "0"])
    code, states, text = check(capsys, "import_pairs", out, 2)
    assert code == 1 and states == {0: "complete", 1: "missing"}, text
    assert "re-run workers: 1 (--array=1)" in text
    import_stage.main([*common, "--worker-index", "1"])
    code, states, text = check(capsys, "import_pairs", out, 2)
    assert code == 0, text


def test_captions_stale_bank_and_wrong_worker_count(tiny_model, tmp_path, capsys):  # noqa: F811
    bank = tmp_path / "bank.txt"
    bank.write_text("cat\ndog\nred ball\n")
    out = tmp_path / "caps"
    captions_stage.main([str(a) for a in caption_args(
        tiny_model, bank, out, "--worker-index", 1, "--num-workers", 2, "--max-tokens", 4)])
    code, states, text = check(capsys, "captions", out, 2)
    assert code == 1 and states == {0: "missing", 1: "complete"}, text
    with pytest.raises(SystemExit, match="started with --num-workers 2"):
        status.main(["--stage", "captions", "--out", str(out), "--num-workers", "3"])
    bank.write_text("cat\ndog\nred ball\nsky\n")
    code, states, text = check(capsys, "captions", out, 2)
    assert states == {0: "missing", 1: "stale"} and f"{bank} changed" in text


def test_not_started_and_array_spec(tmp_path, capsys):
    code, states, text = check(capsys, "images", tmp_path / "nothing", 2)
    assert code == 1 and set(states.values()) == {"missing"} and "does not exist yet" in text
    assert status.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
