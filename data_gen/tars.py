"""Tar archives that ended early: Python's tarfile reads a cut-short archive as if it were whole.

Iterating a TarFile stops without a word at end of file, at a partial header or at a garbage
header after the first member, so an archive cut at a 10 KiB record boundary (the usual way a
copy dies) or mid-member reads as "the members before the cut". A complete archive ends with
the end-of-archive marker: two zero 512-byte blocks right after the last member's padded data.
`check_ended` verifies that marker once iteration has stopped; stdlib only.
"""
import tarfile

END_MARKER = 2 * tarfile.BLOCKSIZE


class TarCutShort(Exception):
    """The archive ends before its end-of-archive marker (message names the file)."""


def check_ended(tar: tarfile.TarFile, path) -> None:
    """Call after iterating all of `tar`; raises TarCutShort unless the end marker follows
    the last member. tar.offset is then where iteration stopped: the end of the last member."""
    try:
        tar.fileobj.seek(tar.offset)
        tail = tar.fileobj.read(END_MARKER)
    except (OSError, EOFError) as e:  # a cut gzip stream ends in EOFError
        raise TarCutShort(f"{path}: tar archive is cut short ({e})") from None
    if len(tail) < END_MARKER or tail.count(0) != END_MARKER:
        what = ("ends inside a member or without the end-of-archive marker"
                if not tail.strip(b"\0") else "holds an unreadable header")
        raise TarCutShort(f"{path}: tar archive {what} at byte {tar.offset}: the file is cut "
                          "short (an interrupted copy?) or damaged; copy it again")


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path) -> bytes:
    """A member's bytes; a member whose data stops mid-way is an error naming file and member."""
    try:
        return tar.extractfile(member).read()
    except (tarfile.ReadError, OSError, EOFError) as e:
        raise TarCutShort(f"{path}: member {member.name} is cut short ({e}); the file is "
                          "truncated or damaged; copy it again") from None
