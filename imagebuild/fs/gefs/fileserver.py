"""gefs as the FileServer disk/mkfs drives (imagebuild.fs.api), over the main dataset.

The installer populates gefs with `disk/mkfs -z 16372 -U` (rc/bin/inst/copydist),
so a file is copied in 16364-byte pieces, not the 4088 of the dist mkfile's
hjfs run: `copy()` (BulkCopy) applies that piece size to decide which 16 KiB
blocks mkfs's writes touch (all-zero pieces are skipped, leaving holes) and
how many writes bump qid.vers.  mkfs attaches as the installer's user; its
mount was made while the reamed user table gave that user id 1, and gefs
keeps the id a fid was attached with, so everything mkfs creates has uid
and muid 1 until the wstats set the owner (fs.c fsattach()).

References: rc/bin/inst/copydist; disk/mkfs.c copy(); gefs fs.c fsattach(),
fscreate(), fswrite(), fswstat(); pack.c dir2statbuf() (mtime rounding).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imagebuild.errors import InputError, LayoutError
from imagebuild.fs.api import FsRefused, SourceFile, Wstat
from imagebuild.fs.gefs.layout import BLKSZ, NSEC, QTDIR
from imagebuild.fs.gefs.server import Dataset, GefsServer

COPYDIST_BUFLEN = 16372 - 8  # disk/mkfs -z 16372
WHOLE_READ = 64 << 20  # files up to this size are read once; larger ones twice


@dataclass(frozen=True)
class GefsFileStat:
    """What stat answers for a file: `is_dir` (QTDIR), `mtime` in seconds since the epoch
    (Xdir.mtime, kept in nanoseconds, rounded as pack.c dir2statbuf() does).
    """

    is_dir: bool
    mtime: int


def touched_blocks(data: bytes, length: int, buflen: int = COPYDIST_BUFLEN) -> tuple[set[int], int]:
    """mkfs copy() over `data`: the blocks its writes touch, and how many writes it makes."""
    touched: set[int] = set()
    writes = 0
    last_zero = False
    zero = bytes(buflen)
    for tot in range(0, length, buflen):
        n = min(buflen, length - tot)
        if data[tot : tot + n] == zero[:n]:
            last_zero = True
            continue
        touched.update(range(tot // BLKSZ, (tot + n - 1) // BLKSZ + 1))
        writes += 1
        last_zero = False
    if last_zero:
        touched.add((length - 1) // BLKSZ)
        writes += 1
    return touched, writes


def _read(source: SourceFile) -> bytes | None:
    """The whole source if it is small, checking it still has its length."""
    if source.length > WHOLE_READ:
        return None
    try:
        data = source.path.read_bytes()
    except OSError as e:
        raise InputError(f"{source.where}: can't read {source.path}: {e.strerror}") from None
    if len(data) != source.length:
        raise InputError(f"{source.where}: {source.path} changed size since the proto was read")
    return data


def _scan_large(source: SourceFile) -> tuple[set[int], int]:
    touched: set[int] = set()
    writes = 0
    last_zero = False
    try:
        with open(source.path, "rb") as f:
            for tot in range(0, source.length, COPYDIST_BUFLEN):
                n = min(COPYDIST_BUFLEN, source.length - tot)
                piece = f.read(n)
                if len(piece) != n:
                    raise InputError(f"{source.where}: {source.path} changed size")
                if piece.count(0) == n:
                    last_zero = True
                    continue
                touched.update(range(tot // BLKSZ, (tot + n - 1) // BLKSZ + 1))
                writes += 1
                last_zero = False
    except OSError as e:
        raise InputError(f"{source.where}: can't read {source.path}: {e.strerror}") from None
    if last_zero:
        touched.add((source.length - 1) // BLKSZ)
        writes += 1
    return touched, writes


class GefsFileServer:
    """FileServer[int] on `ds` (fids are qid paths), as the installer's mount of %main serves it."""

    def __init__(self, server: GefsServer, ds: Dataset, attach_uids: dict[str, int],
                 warn: Callable[[str], None]) -> None:
        self.srv = server
        self.ds = ds
        self.attach_uids = attach_uids  # names whose fids keep an id of an older table
        self.warn = warn
        self.uid = 0
        self.files = 0
        self.bytes = 0
        self._pending: dict[int, dict[int, bytearray]] = {}
        self._writes: dict[int, int] = {}
        self._paths = {e.dir.qid: p for p, e in ds.paths.items()}

    def attach(self, user: str) -> None:
        uid = self.attach_uids.get(user, self.srv.users.get(user))
        if uid is None:
            raise FsRefused(f"unknown user {user!r}")
        self.uid = uid

    def walk(self, path: str) -> int | None:
        e = self.ds.paths.get("/" + "/".join(x for x in path.split("/") if x))
        return None if e is None else e.dir.qid

    def _path(self, fid: int) -> str:
        return self._paths[fid]

    def stat(self, fid: int) -> GefsFileStat:
        d = self.ds.lookup(self._path(fid)).dir
        return GefsFileStat(bool(d.qtype & QTDIR), (d.mtime + NSEC // 2) // NSEC)

    def create(self, parent: int, name: str, perm: int) -> int:
        path = self._path(parent).rstrip("/") + "/" + name
        try:
            e = self.srv.create(self.ds, path, perm, self.uid)
        except LayoutError as err:
            raise FsRefused(str(err).split(": ", 2)[-1]) from None
        self._paths[e.dir.qid] = path
        return e.dir.qid

    def write(self, fid: int, offset: int, data: bytes | memoryview) -> None:
        """One write(5): held per block until the file's next wstat."""
        blocks = self._pending.setdefault(fid, {})
        pos = 0
        while pos < len(data):
            b, o = divmod(offset + pos, BLKSZ)
            n = min(BLKSZ - o, len(data) - pos)
            blk = blocks.setdefault(b, bytearray(BLKSZ))
            blk[o : o + n] = data[pos : pos + n]
            pos += n
        self._writes[fid] = self._writes.get(fid, 0) + 1
        e = self.ds.lookup(self._path(fid))
        e.dir.length = max(e.dir.length, offset + len(data))

    def _flush(self, fid: int) -> None:
        blocks = self._pending.pop(fid, None)
        if blocks is None:
            return
        e = self.ds.lookup(self._path(fid))
        self.srv.write_blocks(self.ds, e, ((b, bytes(blocks[b])) for b in sorted(blocks)),
                              e.dir.length, self._writes.pop(fid), self.uid)

    def copy(self, fid: int, source: SourceFile) -> None:
        """BulkCopy: the file as copydist's 16364-byte writes leave it, each block written once."""
        e = self.ds.lookup(self._path(fid))
        self.files += 1
        self.bytes += source.length
        if source.length == 0:
            return
        data = _read(source)
        if data is not None:
            touched, writes = touched_blocks(data, source.length)

            def blocks() -> Iterator[tuple[int, bytes]]:
                for b in sorted(touched):
                    chunk = data[b * BLKSZ : (b + 1) * BLKSZ]
                    yield b, chunk + bytes(BLKSZ - len(chunk))
        else:
            touched, writes = _scan_large(source)

            def blocks() -> Iterator[tuple[int, bytes]]:
                fd = os.open(source.path, os.O_RDONLY)
                try:
                    for b in sorted(touched):
                        chunk = os.pread(fd, min(BLKSZ, source.length - b * BLKSZ), b * BLKSZ)
                        yield b, chunk + bytes(BLKSZ - len(chunk))
                finally:
                    os.close(fd)
        self.srv.write_blocks(self.ds, e, blocks(), source.length, writes, self.uid)

    def wstat(self, fid: int, change: Wstat) -> None:
        self._flush(fid)
        path = self._path(fid)
        if change.uid is not None and change.uid not in self.srv.users:
            # mkfs does not check the uid wstat: the file stays its creator's
            self.warn(f"{path}: unknown gefs user {change.uid!r}: left owned by its creator")
            if change == Wstat(uid=change.uid):
                return
            change = Wstat(change.mode, None, change.gid, change.mtime, change.name)
        try:
            self._paths[fid] = self.srv.wstat(
                self.ds, path, self.uid, mode=change.mode,
                mtime=None if change.mtime is None else change.mtime * NSEC,
                uid=change.uid, gid=change.gid, rename=change.name,
            )
        except LayoutError as err:
            raise FsRefused(str(err).split(": ", 2)[-1]) from None
