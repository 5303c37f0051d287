"""The input layouts of data_gen.import_pairs, each read as a stream of `Item`s in a fixed order.

  CSV/TSV  (either extension; separator from --sep, or tab if the header line has one, else
           comma) with header `image_path<SEP>caption[<SEP>web_caption]`: the released
           SynthCI-30M layout (tab-separated, in a .csv); quoting as the csv module (and
           pandas) read it; key = the image path; `web_caption` is CLIPS's second caption.
           Or, tab-separated, `id<TAB>image<TAB>caption1...` (SimCLIP/COCO): one row a line,
           quotes literal, trailing empty caption cells dropped; key = the id.
  DIR      NAME.jpg|.jpeg|.png|.webp + NAME.txt (one caption per non-empty line), recursively,
           in sorted order; key = NAME (relative path, no extension)
  *.tar    webdataset shards (a file, a glob, or a comma-separated list); members grouped by
           key (path up to the first dot of the basename), an image member + a .txt member
Table rows name images relative to the image root, found as files under it or as members of
its *.zip archives (data_gen.zip_members), resolved only for the rows a worker owns.
"""
import collections
import csv
import glob
import io
import os
import posixpath
import tarfile
from typing import Iterator, NamedTuple

from data_gen.progress import progress
from data_gen.tars import TarCutShort, check_ended, read_member
from data_gen.zip_members import ZipMembers

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # priority order inside a webdataset sample
PAIRS_HEADERS = (["image_path", "caption"], ["image_path", "caption", "web_caption"])


class Fatal(Exception):
    """An error that stops the import (bad input without --skip-bad, or a broken input file)."""


class ImagePath(NamedTuple):
    """An image named by a table row: `rel` under `root` (a file, or a zip member)."""
    root: str
    rel: str


class Item(NamedTuple):
    where: str  # file + line/member, for messages
    key: str
    image: "str | bytes | ImagePath | list | None"  # path, bytes (tar), ZipRefs, or None if bad
    captions: list
    bad: str = ""  # reason, for items already known to be malformed
    web_caption: str = ""


class Position:
    """How far a reader is through its input (fraction of bytes), for the progress ETA."""
    fraction = None


def _root(path, image_root):
    return image_root or os.path.dirname(os.path.abspath(path))


def detect_sep(path, sep=None) -> str:
    if sep:
        return sep
    with open(path, "rb") as f:
        first = f.readline()
    return "\t" if b"\t" in first else ","


def read_table(path, image_root, sep=None, position=None) -> Iterator[Item]:
    sep = detect_sep(path, sep)
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8-sig", "surrogateescape").rstrip("\r\n").split(sep)
    cols = [h.strip() for h in header]
    if sep == "\t" and len(cols) >= 3 and [c.lower() for c in cols[:2]] == ["id", "image"]:
        yield from _read_simclip(path, image_root, position)
    elif cols in PAIRS_HEADERS:
        yield from _read_pairs(path, image_root, sep, len(cols), position)
    else:
        shown = "'image_path,caption'" if sep == "," else f"'image_path{sep!r}caption'"
        raise Fatal(f"{path} line 1: expected the header {shown} (optionally a third column "
                    "web_caption), or, tab-separated, 'id<TAB>image<TAB>caption1...', got "
                    f"{header}")


def _read_pairs(path, image_root, sep, width, position) -> Iterator[Item]:
    root = _root(path, image_root)
    size = max(os.path.getsize(path), 1)
    # surrogateescape keeps reading past invalid UTF-8; the caption check reports that row.
    with open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="",
                                                   errors="surrogateescape") as f:
        rows = csv.reader(f, delimiter=sep, strict=True)  # strict: a stray quote is an error
        _csv_row(rows, path)  # the header, checked by read_table
        while True:
            first = rows.line_num + 1
            row = _csv_row(rows, path)
            if row is None:
                return
            if position is not None:
                position.fraction = raw.tell() / size
            lines = (f"line {rows.line_num}" if rows.line_num == first
                     else f"lines {first}-{rows.line_num}")
            where = f"{path} {lines}"
            if not row:
                continue
            if any("\n" in c or "\r" in c for c in row):
                # a quoted field over several lines: almost always a quote left open that
                # swallowed the rows after it into this one caption
                yield Item(where, row[0], None, [], "row spans several lines (a quote left "
                           "open?): its caption would hold line breaks and the rows after it")
            elif len(row) != width:
                yield Item(where, "", None, [], f"malformed row: {len(row)} columns, expected "
                           f"{width}")
            else:
                yield Item(where, row[0], ImagePath(root, row[0]), [row[1]],
                           web_caption=row[2].strip() if width == 3 else "")


def _csv_row(rows, path):
    """The next row, or None at the end; a CSV syntax error stops the import, naming the line
    (after it the reader cannot tell where rows start)."""
    first = rows.line_num + 1
    try:
        return next(rows, None)
    except csv.Error as e:
        lines = f"line {first}" + (f" (read to line {rows.line_num})"
                                   if rows.line_num > first else "")
        raise Fatal(f"{path} {lines}: malformed CSV ({e}): a quote left open, or text after a "
                    "closing quote? Quote the whole caption and double the quotes inside it")


def _read_simclip(path, image_root, position) -> Iterator[Item]:
    root = _root(path, image_root)
    size = max(os.path.getsize(path), 1)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            cols = raw.decode("utf-8", "surrogateescape").rstrip("\r\n").split("\t")
            if n == 1:
                width = len(cols)
                continue
            if position is not None:
                position.fraction = f.tell() / size
            if not "".join(cols).strip():
                continue
            where = f"{path} line {n}"
            if not 3 <= len(cols) <= width:
                yield Item(where, "", None, [], f"malformed row: {len(cols)} columns, expected "
                           f"3..{width} as in the header")
                continue
            captions = cols[2:]
            while len(captions) > 1 and not captions[-1].strip():
                captions.pop()
            yield Item(where, cols[0], ImagePath(root, cols[1]), captions)


def _caption_lines(data: bytes) -> list:
    return [s for s in data.decode("utf-8", "surrogateescape").splitlines() if s.strip()]


def read_folder(path, _image_root=None) -> Iterator[Item]:
    groups = collections.defaultdict(lambda: ([], []))  # key -> (image files, txt files)
    for d, dirs, files in os.walk(path):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for name in files:
            stem, ext = os.path.splitext(os.path.relpath(os.path.join(d, name), path))
            ext = ext[1:].lower()
            if not name.startswith(".") and (ext in IMAGE_EXTS or ext == "txt"):
                groups[stem.replace(os.sep, "/")][ext == "txt"].append(stem + "." + ext)
    for key in sorted(groups):
        images, txts = (sorted(g) for g in groups[key])
        where = os.path.join(path, (images or txts)[0])
        if len(images) != 1:
            why = "caption file without an image" if not images else f"several images: {images}"
            yield Item(where, key, None, [], why)
        elif not txts:
            yield Item(where, key, None, [], f"missing caption file: {key}.txt")
        else:
            with open(os.path.join(path, txts[0]), "rb") as f:
                yield Item(where, key, os.path.join(path, images[0]), _caption_lines(f.read()))


def _tar_sample(tar_path, key, members) -> Item:
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    where = f"{tar_path} member {members[ext][0] if ext else next(iter(members.values()))[0]}"
    if ext is None:
        return Item(where, key, None, [], "no image member (jpg/jpeg/png/webp)")
    if "txt" not in members:
        return Item(where, key, None, [], f"missing caption member: {key}.txt")
    return Item(where, key, members[ext][1], _caption_lines(members["txt"][1]))


def read_tars(spec, _image_root=None) -> Iterator[Item]:
    paths = [p for part in spec.split(",") for p in sorted(glob.glob(part))]
    if not paths:
        raise Fatal(f"no .tar files match {spec}")
    for tar_path in paths:
        try:
            with tarfile.open(tar_path) as tar:
                key, members = None, {}
                for m in tar:
                    d, base = posixpath.split(m.name)
                    if not m.isfile() or base.startswith("."):
                        continue
                    stem, _, ext = base.partition(".")  # webdataset: key ends at the first dot
                    if posixpath.join(d, stem) != key and members:
                        yield _tar_sample(tar_path, key, members)
                        members = {}
                    key = posixpath.join(d, stem)
                    members[ext.lower()] = (m.name, read_member(tar, m, tar_path))
                # before the last sample: an archive cut at a member boundary would otherwise
                # yield a last sample that lacks its later members
                check_ended(tar, tar_path)
                if members:
                    yield _tar_sample(tar_path, key, members)
        except TarCutShort as e:
            raise Fatal(str(e)) from None
        except (tarfile.TarError, OSError) as e:
            raise Fatal(f"{tar_path}: cannot read tar file ({e}); cut short or damaged?") from None


def read_items(kind, spec, image_root=None, sep=None, position=None) -> Iterator[Item]:
    if kind in ("csv", "tsv"):
        return read_table(spec, image_root, sep, position)
    return {"folder": read_folder, "tar": read_tars}[kind](spec)


def detect_kind(spec: str) -> str:
    if os.path.isdir(spec):
        return "folder"
    for kind in ("csv", "tsv"):
        if spec.lower().endswith("." + kind):
            if not os.path.isfile(spec):
                raise Fatal(f"input file {spec} not found")
            return kind
    if all(p.lower().endswith(".tar") for p in spec.split(",")):
        return "tar"
    raise Fatal(f"cannot tell the layout of {spec}: expected a .csv, a .tsv, a folder, or "
                ".tar shards (a file, glob or comma-separated list)")


class OutsideRoot(ValueError):
    """A table row's image path that leaves the image root (absolute, or through '..')."""


class Resolver:
    """Table image paths -> a zip member (the root's *.zip archives, indexed once) or a file.
    A path that leaves the root (`/etc/hostname`, `../../x.jpg`, a symlink out) is refused
    (OutsideRoot) unless `allow_outside_root`: a table from elsewhere must not read any file
    the importing user can."""

    def __init__(self, quiet, allow_outside_root=False):
        self.quiet, self.zips, self.allow_outside_root = quiet, {}, allow_outside_root

    def __call__(self, image):
        if not isinstance(image, ImagePath):
            return image
        if image.root not in self.zips:
            has_zips = glob.glob(os.path.join(glob.escape(image.root), "*.zip"))
            try:
                self.zips[image.root] = has_zips and ZipMembers(
                    image.root, lambda xs: progress(xs, len(xs), "import_pairs: indexing zips",
                                                    unit="archives", quiet=self.quiet))
            except ValueError as e:
                raise Fatal(str(e)) from None
        zips = self.zips[image.root]
        found = zips and zips.find(image.rel)
        if found:
            return found
        path = os.path.join(image.root, image.rel)
        if not self.allow_outside_root:
            root = os.path.realpath(image.root)
            if os.path.commonpath([root, os.path.realpath(path)]) != root:
                raise OutsideRoot(f"image path {image.rel!r} leaves the image root {root}; "
                                  "fix the path, set --image-root to a folder holding it, or "
                                  "pass --allow-outside-root if the table is trusted")
        return path
