"""Bad inputs to the data stages, as a table: each ends in a clear error, a counted skip, or the
right output, never in a silent partial import, stale output or a traceback naming nothing.

Each case builds its input in tmp_path and calls the stage's main(argv) in-process, so the table
costs seconds. `before`: how the code before issue 13's data-side fixes handled the case:
  FIXED    wrong: exit 0 with wrong, partial or stale data, or a traceback naming no file;
  CLEARER  an error already, but one that did not say what differs or named the wrong line;
  SAME     already right (kept so that the table documents behaviour).
Every FIXED and CLEARER case fails on that code (checked when the table was written).
"""
import dataclasses
import importlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Callable, Optional

import pytest
from PIL import Image


def image(i: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (40 * i % 256, 90, 200)).save(buf, fmt)
    return buf.getvalue()


def make_tar(path: Path, members: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def webdataset_tar(path: Path, n: int) -> Path:
    """import_pairs input: KEY.jpg + KEY.txt per sample."""
    return make_tar(path, [m for i in range(n) for m in
                           [(f"k{i}.jpg", image(i)), (f"k{i}.txt", f"caption {i}".encode())]])


def pairs_tar(path: Path, n: int, start: int = 0, jpg=image, meta=None) -> Path:
    """data_gen.write input, as data_gen.images writes it: KEY.jpg + KEY.json per sample."""
    meta = meta or (lambda i: json.dumps({"key": f"s{i}", "caption": f"caption {i}"}).encode())
    return make_tar(path, [m for i in range(start, start + n) for m in
                           [(f"s{i}.jpg", jpg(i)), (f"s{i}.json", meta(i))]])


def member_boundary(path: Path, k: int) -> int:
    """Byte offset of member k's header: cutting there keeps members 0..k-1 whole."""
    with tarfile.open(path) as tar:
        return tar.getmembers()[k].offset


def members_end(path: Path) -> int:
    """Byte offset just after the last member's padded data: where the end marker starts."""
    with tarfile.open(path) as tar:
        m = tar.getmembers()[-1]
    return m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def cut_webdataset(tmp: Path, samples: int, where: Callable) -> Path:
    path = webdataset_tar(tmp / "in" / "a.tar", samples)
    cut(path, where(path))
    return path


def cut(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def csv_input(tmp: Path, body: str, header: str = "image_path,caption") -> Path:
    (tmp / "in").mkdir(exist_ok=True)
    for i, name in enumerate("abc"):
        (tmp / "in" / f"{name}.jpg").write_bytes(image(i))
    src = tmp / "in" / "pairs.csv"
    src.write_text(f"{header}\n{body}")
    return src


def tsv_input(tmp: Path, body: str) -> Path:
    src = csv_input(tmp, "").with_suffix(".tsv")
    src.write_text("id\timage\tcaption\n" + body)
    return src


def invoke(stage: str, argv: list, capsys) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `python -m data_gen.STAGE argv`, run in-process."""
    main = importlib.import_module(f"data_gen.{stage}").main
    try:
        code = main([str(a) for a in argv]) or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int):
            print(e.code)
    out = capsys.readouterr()
    return code, out.out + out.err


def must_succeed(stage, argv, capsys) -> None:
    code, text = invoke(stage, argv, capsys)
    assert code == 0, text


def manifest(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "manifest.json").read_text())


def no_output(tmp: Path) -> None:
    """Nothing final left behind: no shards, no manifest."""
    out = tmp / "out"
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in left if n.endswith(".tfrecord") or n == "manifest.json"], left


FIXED, CLEARER, SAME = "fixed", "clearer", "same"


@dataclasses.dataclass
class Case:
    name: str
    stage: str
    setup: Callable  # (tmp, capsys) -> argv; writes the input, may run a first command
    code: int  # expected exit status
    says: str  # regex the output must match
    before: str  # FIXED, CLEARER or SAME: see the module docstring
    check: Optional[Callable] = None  # (tmp) -> None: the output on disk


def imp(src, *extra, shards=1):
    return ["--input", src, "--out", src.parent.parent / "out", "--num-shards", shards, *extra]


def import_then(change: Callable, *second, first=()):
    """Imports a.jpg+b.jpg, calls change(tmp), then returns the argv of the rerun."""
    def setup(tmp, capsys):
        src = csv_input(tmp, "a.jpg,red\nb.jpg,blue\n")
        must_succeed("import_pairs", imp(src, *first), capsys)
        change(tmp)
        return imp(src, *second)
    return setup


def folder_then_edit(tmp, capsys):
    """Imports a folder of a.jpg + a.txt, then edits the caption file."""
    (tmp / "in").mkdir()
    (tmp / "in" / "a.jpg").write_bytes(image(0))
    (tmp / "in" / "a.txt").write_text("red")
    argv = ["--input", tmp / "in", "--out", tmp / "out", "--num-shards", 1]
    must_succeed("import_pairs", argv, capsys)
    (tmp / "in" / "a.txt").write_text("crimson")
    return argv


def append_row(tmp):
    with open(tmp / "in" / "pairs.csv", "a") as f:
        f.write("c.jpg,green\n")


def write_args(tmp, *extra, shards=2):
    return ["--pairs", f"{tmp}/pairs/*.tar", "--out", tmp / "out", "--num-shards", shards,
            "--contact-sheet", 2, *extra]


def write_with(make_pairs: Callable, *extra):
    def setup(tmp, capsys):
        make_pairs(tmp / "pairs")
        return write_args(tmp, *extra)
    return setup


def two_tars(folder: Path) -> None:
    pairs_tar(folder / "pairs-00000.tar", 3)
    pairs_tar(folder / "pairs-00001.tar", 3, start=3)


def cut_tar(where: Callable) -> Callable:
    def make(folder):
        two_tars(folder)
        path = folder / "pairs-00000.tar"
        cut(path, where(path))
    return make


def bank_and_captions(tmp: Path, lines: list) -> list:
    (tmp / "bank.txt").write_text("dog\ncat\n")
    (tmp / "caps").mkdir(exist_ok=True)
    (tmp / "caps" / "captions-00000-of-00001.jsonl").write_text("".join(l + "\n" for l in lines))
    return ["--captions", f"{tmp}/caps/*.jsonl", "--concepts", tmp / "bank.txt",
            "--out", tmp / "out"]


GOOD_ROWS = ['{"caption": "a dog on grass"}', '{"caption": "a cat on a sofa"}']


def balance_rows(*lines):
    return lambda tmp, capsys: bank_and_captions(tmp, [GOOD_ROWS[0], *lines])


def images_rows(*lines):
    def setup(tmp, capsys):
        (tmp / "caps.jsonl").write_text("".join(l + "\n" for l in [GOOD_ROWS[0], *lines]))
        return ["--captions", tmp / "caps.jsonl", "--out", tmp / "out"]
    return setup


def written(n, skipped=0):
    def check(tmp):
        m = manifest(tmp)
        counts = m.get("counts") or {"written": m["num_records"], "skipped": 0}
        assert (counts["written"], counts["skipped"]) == (n, skipped), counts
        if "read" in counts:  # reconciles: every row read is written or skipped for a reason
            assert counts["read"] == n + sum(m.get("skipped_by_reason", {}).values())
    return check


CASES = [
    # --- import_pairs, CSV: rows that merge ---
    Case("csv quote opened and never closed", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, 'a.jpg,"red\nb.jpg,blue\nc.jpg,green\n')),
         1, r"pairs.csv line 2 \(read to line 4\): malformed CSV", FIXED, no_output),
    Case("csv quote closed rows later: rows merged", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, 'a.jpg,"red\nb.jpg,blue"\nc.jpg,green\n')),
         1, r"pairs.csv lines 2-3: row spans several lines", FIXED, no_output),
    Case("csv merged rows with --skip-bad: counted skip naming the lines", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, 'a.jpg,"red\nb.jpg,blue"\nc.jpg,green\n'),
                            "--skip-bad", "--max-bad-fraction", "0.5"),
         0, r"skipped 1 of 2 items \(row spans several lines", FIXED, written(1, 1)),
    Case("csv text after a closing quote", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, 'a.jpg,"red" ball\n')),
         1, r"pairs.csv line 2: malformed CSV", FIXED, no_output),
    Case("csv quotes inside an unquoted caption are literal", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, 'a.jpg,a "red" ball\nb.jpg,"blue, light"\n')),
         0, r"wrote 2 records", SAME, written(2)),
    Case("csv with CRLF line ends is not multi-line", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, "a.jpg,red\r\nb.jpg,blue\r\n")),
         0, r"wrote 2 records", SAME, written(2)),
    Case("tsv: quotes are literal, a row is a line", "import_pairs",
         lambda tmp, c: imp(tsv_input(tmp, 'k1\ta.jpg\t"red\nk2\tb.jpg\tblue"\n')),
         0, r"wrote 2 records", SAME, written(2)),
    Case("csv missing image", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, "a.jpg,red\nzz.jpg,blue\n")),
         1, r"pairs.csv line 3: missing image file", SAME, no_output),
    Case("csv wrong header", "import_pairs", lambda tmp, c: imp(csv_input(tmp, "", "path,text")),
         1, r"line 1: expected the header", SAME, no_output),
    Case("csv row with three columns", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, "a.jpg,red,extra\n")),
         1, r"line 2: malformed row: 3 columns", SAME, no_output),
    Case("csv missing image with --skip-bad: counts reconcile", "import_pairs",
         lambda tmp, c: imp(csv_input(tmp, "a.jpg,red\nzz.jpg,blue\nb.jpg,x\n"), "--skip-bad",
                            "--max-bad-fraction", "0.5"),
         0, r"missing image file: 1", FIXED, written(2, 1)),  # no skipped_by_reason before
    # --- import_pairs, tar: archives cut short ---
    Case("tar cut at a member boundary", "import_pairs",
         lambda tmp, c: imp(cut_webdataset(tmp, 4, lambda p: member_boundary(p, 4))),
         1, r"a.tar: tar archive ends inside a member or without the end-of-archive marker",
         FIXED, no_output),
    Case("tar cut at a 10 KiB record boundary", "import_pairs",
         lambda tmp, c: imp(cut_webdataset(tmp, 12, lambda p: 10240)),
         1, r"a.tar: .*cut short", FIXED, no_output),  # imported the 4 samples before the cut
    Case("tar without its end marker only", "import_pairs",
         lambda tmp, c: imp(cut_webdataset(tmp, 2, members_end)),
         1, r"a.tar: tar archive .*end-of-archive marker", FIXED, no_output),
    Case("tar with one of its two end blocks", "import_pairs",
         lambda tmp, c: imp(cut_webdataset(tmp, 2, lambda p: members_end(p) + 512)),
         1, r"a.tar: tar archive .*end-of-archive marker", FIXED, no_output),
    Case("tar with garbage after its members", "import_pairs",
         lambda tmp, c: imp((lambda p: (p.write_bytes(
             p.read_bytes()[:member_boundary(p, 2)] + b"x" * 2048), p)[1])(
             webdataset_tar(tmp / "in" / "a.tar", 2))),
         1, r"a.tar: tar archive holds an unreadable header", FIXED, no_output),
    Case("tar whole", "import_pairs",
         lambda tmp, c: imp(webdataset_tar(tmp / "in" / "a.tar", 3)),
         0, r"wrote 3 records", SAME, written(3)),
    # --- import_pairs: reruns ---
    Case("import rerun, same input", "import_pairs", import_then(lambda tmp: None),
         0, r"already complete", SAME, written(2)),
    Case("import rerun after the CSV changed", "import_pairs", import_then(append_row),
         1, r"pairs.csv changed \(size or mtime\).*--overwrite", FIXED, written(2)),
    Case("import rerun after the CSV changed, --overwrite", "import_pairs",
         import_then(append_row, "--overwrite"), 0, r"wrote 3 records", FIXED, written(3)),
    Case("import rerun after an image folder changed", "import_pairs", folder_then_edit,
         1, r"files.names_sizes_mtimes_sha256: changed", FIXED),
    Case("import rerun with another --max-side", "import_pairs",
         import_then(lambda tmp: None, "--max-side", 8), 1,
         r"settings.max_side: 256 -> 8.*--overwrite", CLEARER),
    # --- write ---
    Case("write whole tars", "write", write_with(two_tars), 0, r"write: done", SAME,
         written(6)),
    Case("write: tar cut at a member boundary", "write",
         write_with(cut_tar(lambda p: member_boundary(p, 4))), 1,
         r"pairs-00000.tar: tar archive ends .* end-of-archive marker", FIXED, no_output),
    Case("write: tar cut mid-member", "write",
         write_with(cut_tar(lambda p: member_boundary(p, 2) + 700)), 1,
         r"pairs-00000.tar: (member s1.jpg is cut short|cannot read tar file)", FIXED,
         no_output),
    Case("write: PNG bytes as KEY.jpg", "write",
         write_with(lambda f: pairs_tar(f / "pairs-00000.tar", 3,
                                        jpg=lambda i: image(i, "PNG" if i == 1 else "JPEG"))),
         1, r"pairs-00000.tar member s1.jpg: a PNG image, not JPEG", FIXED, no_output),
    Case("write: truncated JPEG", "write",
         write_with(lambda f: pairs_tar(f / "pairs-00000.tar", 2,
                                        jpg=lambda i: image(i)[:200])),
         1, r"pairs-00000.tar member s0.jpg: not a readable JPEG", FIXED, no_output),
    Case("write: KEY.json not JSON", "write",
         write_with(lambda f: pairs_tar(f / "pairs-00000.tar", 2, meta=lambda i: b"{oops")),
         1, r"pairs-00000.tar member s0.json: not JSON", FIXED, no_output),
    Case("write: KEY.json without a caption", "write",
         write_with(lambda f: pairs_tar(f / "pairs-00000.tar", 2, meta=lambda i: b'{"k": 1}')),
         1, r"member s0.json: expected a JSON object with a string 'caption'", FIXED, no_output),
    Case("write: KEY.txt caption not UTF-8", "write",
         write_with(lambda f: make_tar(f / "pairs-00000.tar", [("s0.jpg", image(0)),
                                                               ("s0.txt", b"red \xff ball")])),
         1, r"pairs-00000.tar member s0.txt: caption is not UTF-8", FIXED, no_output),
    Case("write: --manifest-extra missing, found before any shard", "write",
         write_with(two_tars, "--manifest-extra", "nowhere.json"), 1,
         r"--manifest-extra nowhere.json: not a readable JSON", FIXED, no_output),
    Case("write rerun with another --num-shards", "write",
         lambda tmp, c: (must_succeed("write", write_with(two_tars)(tmp, c), c),
                         write_args(tmp, shards=3))[1],
         1, r"num_shards: 2 -> 3.*--overwrite", FIXED, written(6)),
    Case("write rerun after a pairs file changed, --overwrite", "write",
         lambda tmp, c: (must_succeed("write", write_with(two_tars)(tmp, c), c),
                         pairs_tar(tmp / "pairs" / "pairs-00001.tar", 4, start=3),
                         write_args(tmp, "--overwrite"))[2],
         0, r"--overwrite: removed", FIXED, written(7)),
    # --- balance ---
    Case("balance: row is not an object", "balance", balance_rows("[1, 2]"), 1,
         r"captions-00000-of-00001.jsonl line 2: expected a JSON object .* got a JSON list",
         FIXED),
    Case("balance: row without caption", "balance", balance_rows('{"text": "a dog"}'), 1,
         r"jsonl line 2: expected a string \"caption\", got no \"caption\"", FIXED),
    Case("balance: caption not a string", "balance", balance_rows('{"caption": 7}'), 1,
         r"jsonl line 2: .*\"caption\" of type int", FIXED),
    Case("balance: line not JSON", "balance", balance_rows("", "{nope"), 1,
         r"jsonl line 3: not JSON", SAME),
    Case("balance rerun with another --t", "balance",
         lambda tmp, c: (must_succeed("balance", argv := balance_rows()(tmp, c), c),
                         argv + ["--t", 5])[1],
         1, r"balance: .* \(t: 10.0 -> 5.0; recorded in", FIXED),
    Case("balance rerun after the captions changed", "balance",
         lambda tmp, c: (must_succeed("balance", balance_rows()(tmp, c), c),
                         balance_rows(GOOD_ROWS[1])(tmp, c))[1],
         1, r"captions-00000-of-00001.jsonl changed \(size or mtime\)", FIXED),
    # --- images ---
    Case("images: row is not an object", "images", images_rows('"a dog"'), 1,
         r"caps.jsonl line 2: expected a JSON object .* got a JSON str", FIXED),
    Case("images: caption not a string", "images", images_rows("", '{"caption": null}'), 1,
         r"caps.jsonl line 3: expected a string \"caption\"", CLEARER),  # said "row 2"
    Case("images rerun with another seed", "images",
         lambda tmp, c: (must_succeed("images", ["--shapes", 2, "--save-size", 16, "--out",
                                                  tmp / "out"], c),
                         ["--shapes", 2, "--save-size", 16, "--out", tmp / "out", "--seed", 1])[1],
         1, r"seed: 42 -> 1", CLEARER),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    argv = case.setup(tmp_path, capsys)
    capsys.readouterr()
    code, text = invoke(case.stage, argv, capsys)
    assert code == case.code, text
    assert re.search(case.says, text, re.S), text
    if case.code:
        assert "Traceback" not in text and len(text.strip().splitlines()) <= 2, text
    if case.check:
        case.check(tmp_path)


def test_table_size():
    assert len(CASES) >= 25 and sum(c.before == FIXED for c in CASES) >= 20


def test_demo_rerender_with_other_settings_keeps_no_old_images(tmp_path):
    """Fails before the fix: zeroshot PNGs of the first render stayed among the second's."""
    from synthclip_jax.data import shapes_demo
    settings = dict(seed=0, image_size=16, num_train=8, num_retrieval=4)
    shapes_demo.ensure_demo_data(tmp_path, zeroshot_per_class=2, **settings)
    shapes_demo.ensure_demo_data(tmp_path, zeroshot_per_class=1, **{**settings, "seed": 1})
    pngs = list((tmp_path / "zeroshot").glob("*/*.png"))
    assert len(pngs) == len(shapes_demo.HELD_OUT)
    assert json.loads((tmp_path / "manifest.json").read_text())["settings"]["seed"] == 1
