"""disk/mkfs -z 4096 -U: the requests mkfs makes of a file server, in its order, once for all.

The dist mkfile populates the new file system with

    disk/mkfs -z 4096 -U -s /n/src9 -d /n/newfs <{cat $proto $bootproto}

For every entry the protos yield (imagebuild.fs.proto.read_proto), mkfs.c's
protoenum() does, against the mounted file server:

- uptodate(): if the target exists and its mtime is at least the source's,
  nothing happens;
- a directory, mkdir(): create(name, perm) - or, when it exists already as a
  directory, nothing - then wstat(mode, gid, mtime) and wstat(uid);
- a file, copy(): create `__mkfstmp` in the parent with perm 0666, read the
  source in pieces of -z 4096 minus 8 = 4088 bytes, write each piece that is
  not all zero at its offset (an all-zero piece is skipped with a seek, a
  hole), and if the last piece was skipped write one zero byte at length-1
  so the file has its length; then wstat(mode, gid, mtime, name) renames the
  temporary onto the real name and wstat(uid) sets the owner (-U).

Where mkfs would warn and go on we are stricter (docs/hjfs.md): replacing an
existing older file, a file named `__mkfstmp`, a parent that is not a
directory are errors naming the proto line.  With SOURCE_DATE_EPOCH the
sources' mtimes are clamped to it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from imagebuild.errors import InputError, LayoutError
from imagebuild.fs.api import DMDIR, BulkCopy, FileServer, FsRefused, SourceFile, Wstat
from imagebuild.fs.proto import ProtoEntry

BUFLEN = 4096 - 8  # mkfs -z 4096: buflen = 4096-8 bytes per read and write
MKFSTMP = "__mkfstmp"  # copy() writes here, then renames by wstat
READ_SIZE = 1024 * BUFLEN  # how much copy_writes reads at once (about 4 MiB)

F = TypeVar("F")


def zero_pieces(data: bytes | memoryview, size: int) -> list[int]:
    """Indexes of the all-zero pieces among the `size`-byte pieces `data` splits into.

    The last piece may be short.  The byte in the middle of each piece rules
    most pieces out at once; only pieces where it is zero are compared in full.
    """
    data = bytes(data) if isinstance(data, memoryview) else data
    count = -(-len(data) // size)
    middles = data[size // 2 :: size]
    candidates: list[int] = []
    k = middles.find(0)
    while k >= 0:
        candidates.append(k)
        k = middles.find(0, k + 1)
    if len(middles) < count:  # the last piece is too short to have a middle byte
        candidates.append(count - 1)
    zeros = bytes(size)
    return [
        k
        for k in candidates
        if data.startswith(zeros[: min(size, len(data) - k * size)], k * size)
    ]


def size_changed(source: SourceFile) -> InputError:
    """The error for a source that is no longer as long as the proto walk found it."""
    return InputError(f"{source.where}: {source.source_path} changed size since the proto was read")


def open_for_reading(source: SourceFile) -> int:
    """Open a source for reading (a file descriptor) without checking its length.

    Raises InputError naming `source.where` if it cannot be opened.
    """
    try:
        return os.open(source.source_path, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"{source.where}: can't open {source.source_path}: {e.strerror}") from None


def open_source(source: SourceFile) -> int:
    """Open a source for reading (a file descriptor) and check it still has its length.

    Raises InputError naming `source.where` if it cannot be opened or has changed size.
    """
    fd = open_for_reading(source)
    if os.fstat(fd).st_size != source.length:
        os.close(fd)
        raise size_changed(source)
    return fd


def read_whole(source: SourceFile) -> bytes:
    """The whole of a source in one read (for files of a few MB at most).

    Raises InputError naming `source.where` if it cannot be opened or read,
    or does not have its length (asking one byte more tells a grown file).
    """
    fd = open_for_reading(source)
    try:
        data = os.pread(fd, source.length + 1, 0)
    except OSError as e:
        raise InputError(f"{source.where}: can't read {source.source_path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) != source.length:
        raise size_changed(source)
    return data


def read_exact(fd: int, source: SourceFile, size: int, offset: int) -> bytes:
    """pread `size` bytes at `offset`; InputError if the file got shorter."""
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise size_changed(source)
    return data


def copy_writes(
    source: SourceFile, buflen: int = BUFLEN
) -> Iterator[tuple[int, bytes | memoryview]]:
    """mkfs copy()'s writes of `source`: (byte offset, data) in file order.

    Every `buflen`-byte piece (-z minus 8) that is not all zero (the last one may be
    short), and, when the last piece was all zero, one zero byte at
    length-1.  Raises InputError if the source cannot be read or changes size.
    """
    length = source.length
    if length == 0:
        return
    fd = open_source(source)
    try:
        offset = 0
        last_hole = False
        while offset < length:
            chunk = READ_SIZE // BUFLEN * buflen  # whole pieces, so none straddles two reads
            data = read_exact(fd, source, min(chunk, length - offset), offset)
            view = memoryview(data)
            holes = set(zero_pieces(data, buflen))
            for k, start in enumerate(range(0, len(data), buflen)):
                last_hole = k in holes
                if not last_hole:
                    yield offset + start, view[start : start + buflen]
            offset += len(data)
        if last_hole:
            yield length - 1, b"\0"
    finally:
        os.close(fd)


def mkfs(
    server: FileServer[F],
    entries: Iterable[ProtoEntry],
    *,
    user: str,
    default_owner: tuple[str, str],
    timestamp: int | None,
    buflen: int = BUFLEN,
) -> None:
    """Replay disk/mkfs -z 4096 -U for `entries` (in proto order) against `server`.

    `buflen` is -z minus 8: the size of each write (the installer's copydist uses -z 16372).

    mkfs attaches as `user` (creator and muid of every file it makes).
    Entries without an owner get `default_owner` (uid, gid); `timestamp`
    (SOURCE_DATE_EPOCH) clamps the sources' mtimes.  Raises LayoutError
    naming the proto file, line and path when the server refuses a request,
    InputError when a source cannot be read.
    """
    try:
        server.attach(user)
    except FsRefused as e:
        raise LayoutError(f"mkfs user {user!r}: {e}") from None
    bulk: BulkCopy[F] | None = server if isinstance(server, BulkCopy) else None
    walk, stat, create, wstat = server.walk, server.stat, server.create, server.wstat
    default_uid, default_gid = default_owner
    for entry in entries:  # mkfs.c protoenum(): uptodate, then mkdir or copy
        path = entry.path
        where = f"{entry.origin}: {path}" if entry.origin else path
        if path[:1] != "/":
            raise LayoutError(f"{where}: not a path in the new file system")
        mtime = entry.mtime
        if timestamp is not None and mtime > timestamp:
            mtime = timestamp
        uid = entry.uid if entry.uid is not None else default_uid
        gid = entry.gid if entry.gid is not None else default_gid
        try:
            existing = walk(path)
            if existing is not None:
                _uptodate(server, existing, entry, where, Wstat(entry.mode, None, gid, mtime), uid)
                continue
            parent_path, _, name = path.rpartition("/")
            parent_path = parent_path or "/"
            if name == MKFSTMP:
                raise LayoutError(f"{where}: the name {MKFSTMP} is mkfs's temporary file")
            parent = walk(parent_path)
            if parent is None or not stat(parent).is_dir:
                raise LayoutError(f"{where}: can't create: {parent_path} is not a directory")
            if entry.mode & DMDIR:
                fid = create(parent, name, entry.mode)
                wstat(fid, Wstat(entry.mode, None, gid, mtime))
            else:
                if walk(parent_path.rstrip("/") + "/" + MKFSTMP) is not None:
                    raise LayoutError(f"{where}: {parent_path} holds a file named {MKFSTMP}")
                fid = create(parent, MKFSTMP, 0o666)
                source = SourceFile(entry.source_path, entry.length, where)
                if bulk is not None:
                    bulk.copy(fid, source)
                else:
                    for offset, data in copy_writes(source, buflen):
                        server.write(fid, offset, data)
                wstat(fid, Wstat(entry.mode, None, gid, mtime, name))
            wstat(fid, Wstat(None, uid))
        except FsRefused as e:
            raise LayoutError(f"{where}: {e}") from None


def _uptodate(
    server: FileServer[F], existing: F, entry: ProtoEntry, where: str, attrs: Wstat, uid: str
) -> None:
    """mkfs.c uptodate() and mkdir() for a path that exists already: nothing when it is at
    least as new as the source, the wstats for a directory, else an error."""
    st = server.stat(existing)
    if st.mtime & 0xFFFFFFFF >= (attrs.mtime or 0) & 0xFFFFFFFF:
        return
    if entry.is_dir and st.is_dir:  # mkdir(): the create fails, the wstats apply
        server.wstat(existing, attrs)
        server.wstat(existing, Wstat(uid=uid))
        return
    raise LayoutError(
        f"{where}: already in the file system from an older source; "
        "replacing files is not supported"
    )


__all__ = [
    "BUFLEN",
    "MKFSTMP",
    "READ_SIZE",
    "copy_writes",
    "mkfs",
    "open_for_reading",
    "open_source",
    "read_exact",
    "read_whole",
    "size_changed",
    "zero_pieces",
]
