"""Images inside zip archives, found by path without unzipping (the released SynthCI-30M keeps
its images in ~3,000 `SynthCI-30/data/*.zip`, whose members carry the CSV's `image_path`).

`ZipMembers(root)` reads the central directory of every `*.zip` directly under `root` once and
keeps, per member, one row of a packed NumPy array sorted by an 8-byte blake2b digest of the
name: archive number, offset of the member's local header, compressed size, method and CRC-32
(29 bytes a member, ~0.9 GB for 30M; a dict of 30M names and ZipInfo objects would be ~15 GB).
`find(name)` binary-searches the digest and returns `ZipRef`s, which travel to the decoding
processes; `read_member` reads the member from its offset (one seek, no central directory per
process, so rows in any order cost the same) and checks the name and CRC-32 there, so a digest
collision or a damaged archive is an error, never a wrong image.
"""
import collections
import glob
import hashlib
import os
import struct
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

OPEN_FILES = 16  # per process
ROW = np.dtype([("digest", "<u8"), ("archive", "<u4"), ("offset", "<u8"), ("size", "<u4"),
                ("method", "u1"), ("crc", "<u4")])  # packed: 29 bytes
_LOCAL_HEADER = struct.Struct("<4s2x2xH4x4x4x4xHH")  # signature, flags, method, name/extra len


class ZipRef(NamedTuple):
    archive: str
    member: str
    offset: int
    size: int
    method: int
    crc: int


def name_digest(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "little")


class ZipMembers:
    def __init__(self, root: str, progress=None):
        self.archives = sorted(glob.glob(os.path.join(glob.escape(root), "*.zip")))
        parts = []
        for a, path in enumerate(progress(self.archives) if progress else self.archives):
            try:
                with zipfile.ZipFile(path) as z:
                    infos = [i for i in z.infolist() if not i.is_dir()]
            except (zipfile.BadZipFile, OSError) as e:
                raise ValueError(f"{path}: cannot read zip archive ({e}); cut short or "
                                 "damaged? copy it again") from None
            rows = np.zeros(len(infos), ROW)
            rows["digest"] = np.fromiter((name_digest(i.filename) for i in infos), np.uint64,
                                         len(infos))
            rows["archive"] = a
            rows["offset"] = [i.header_offset for i in infos]
            rows["size"] = [i.compress_size for i in infos]
            rows["method"] = [i.compress_type for i in infos]
            rows["crc"] = [i.CRC for i in infos]
            parts.append(rows)
        rows = np.concatenate(parts) if parts else np.zeros(0, ROW)
        self.rows = rows[np.argsort(rows["digest"], kind="stable")]

    def __len__(self) -> int:
        return len(self.rows)

    def find(self, name: str) -> list:
        """The members that may be `name` (one, unless digests collide; none if absent)."""
        d = np.uint64(name_digest(name))
        digests = self.rows["digest"]
        lo, hi = np.searchsorted(digests, d, "left"), np.searchsorted(digests, d, "right")
        return [ZipRef(self.archives[int(r["archive"])], name, int(r["offset"]), int(r["size"]),
                       int(r["method"]), int(r["crc"])) for r in self.rows[lo:hi]]


_files: "collections.OrderedDict[str, object]" = collections.OrderedDict()


def _file(path: str):
    if path in _files:
        _files.move_to_end(path)
    else:
        if len(_files) >= OPEN_FILES:
            _files.popitem(last=False)[1].close()
        _files[path] = open(path, "rb")
    return _files[path]


def read_member(ref: ZipRef) -> bytes:
    """The member's bytes. Raises KeyError if the local header names another member (a digest
    collision: try the next candidate) and ValueError for a damaged member."""
    f = _file(ref.archive)
    f.seek(ref.offset)
    head = f.read(_LOCAL_HEADER.size)
    where = f"{ref.archive} member {ref.member}"
    if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        raise ValueError(f"{where}: no local header at byte {ref.offset}; archive damaged")
    _, _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    name = f.read(name_len)
    if name.decode("utf-8", "surrogateescape") != ref.member and \
            name.decode("cp437") != ref.member:
        raise KeyError(ref.member)
    f.seek(extra_len, os.SEEK_CUR)
    data = f.read(ref.size)
    if len(data) != ref.size:
        raise ValueError(f"{where}: cut short ({len(data)} of {ref.size} bytes)")
    if ref.method == zipfile.ZIP_DEFLATED:
        data = zlib.decompress(data, -15)
    elif ref.method != zipfile.ZIP_STORED:  # rare for images: let zipfile do it
        with zipfile.ZipFile(ref.archive) as z:
            data = z.read(ref.member)
    if zlib.crc32(data) != ref.crc:
        raise ValueError(f"{where}: CRC-32 mismatch; archive damaged")
    return data


def read_any(refs: list) -> bytes:
    """The bytes of the first of `refs` that is the member (KeyError if none is)."""
    for ref in refs:
        try:
            return read_member(ref)
        except KeyError:
            continue
    raise KeyError(refs[0].member if refs else "")
