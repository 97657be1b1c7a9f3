"""The file-server interface disk/mkfs drives, and what every file-system reader offers.

On Plan 9, disk/mkfs does not know the format it populates: it mounts a file
server (hjfs, gefs, cwfs) and speaks 9P to it, walking, creating, writing and
wstat'ing files in the order the protos give.  imagebuild keeps that split:
`imagebuild.fs.mkfs` replays mkfs's requests (the order, the temporary file,
the 4088-byte writes, the owners and times) once, and each file system
implements `FileServer` - an in-memory model of its server that turns those
requests into blocks.

The operations are the 9P ones mkfs uses (intro(5)), named after the system
calls mkfs makes (sys/src/cmd/disk/mkfs.c):

    attach(user)                      who mkfs runs as: creator and muid of every new file
    walk(path) -> fid | None          a rooted path, `/` separated; None when it does not exist
    stat(fid) -> FileStat             dirstat(2): at least is_dir and mtime
    create(parent, name, perm) -> fid create(5) in a directory fid; perm is Dir.mode bits
    write(fid, offset, data)          write(5) of one piece at a byte offset
    wstat(fid, Wstat)                 wstat(5) of the fields that are not None

A fid is whatever handle the server chooses (the type parameter `Fid`); mkfs
only passes it back.  A server refuses a request by raising `FsRefused` with
the reason alone ("file exists", "unknown user 'bob'"); mkfs adds the proto
file, line and path.  A server that can copy a whole source file faster than
piece by piece (hjfs places runs of blocks without reading them) implements
`BulkCopy` as well; its `copy` must leave exactly what mkfs's writes would.

Readers (`FsReader`) are the other half: ls, cat, inspect and fsck use them
on a built image, whatever the file system.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol, TypeVar, runtime_checkable

from imagebuild.errors import LayoutError
from imagebuild.fs.proto import DMAPPEND, DMDIR, DMEXCL, DMTMP

Fid = TypeVar("Fid")
Fid_contra = TypeVar("Fid_contra", contravariant=True)


class FsRefused(LayoutError):
    """A file server refused a request (9P's Rerror); the message is the reason alone."""


class Wstat(NamedTuple):
    """The fields of a wstat(5) request; None leaves a field as it is (nulldir(2)).

    `mode` is a Plan 9 Dir.mode (permission bits, DMDIR/DMAPPEND/DMEXCL/DMTMP
    on top), `uid`/`gid` are user names, `mtime` seconds since the epoch (the
    wire carries 32 bits), `name` a new last element (a rename in place).
    """

    mode: int | None = None
    uid: str | None = None
    gid: str | None = None
    mtime: int | None = None
    name: str | None = None


class FileStat(Protocol):
    """What mkfs reads back from dirstat(2): whether a path is a directory, and its mtime."""

    @property
    def is_dir(self) -> bool: ...

    @property
    def mtime(self) -> int: ...


class SourceFile:
    """A regular file mkfs copies: its path on the host, its length in bytes as the proto
    walk stat'ed it, and `where` (proto file:line and path) for messages.

    The path is kept as given, a string (`source_path`, for os.open); `path`
    makes a Path of it.
    """

    __slots__ = ("length", "source_path", "where")

    source_path: str
    length: int
    where: str

    def __init__(self, path: str | os.PathLike[str], length: int, where: str) -> None:
        self.source_path = path if isinstance(path, str) else os.fspath(path)
        self.length = length
        self.where = where

    @property
    def path(self) -> Path:
        return Path(self.source_path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceFile):
            return NotImplemented
        return (self.source_path, self.length, self.where) == (
            other.source_path, other.length, other.where)  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.source_path, self.length, self.where))

    def __repr__(self) -> str:
        return f"SourceFile({self.source_path!r}, {self.length}, {self.where!r})"


class FileServer(Protocol[Fid]):
    """The 9P requests disk/mkfs makes of the file server it populates.

    Every method raises `FsRefused` when the server refuses (unknown user,
    name it cannot store, no room, file exists); a server may raise
    `InputError` when reading a source fails.  Requests are made as the user
    given to `attach`.
    """

    def attach(self, user: str) -> None:
        """Tattach as `user`; raises FsRefused if the server does not know the user."""
        ...

    def walk(self, path: str) -> Fid | None:
        """The file at rooted `path` ("/", "/sys/lib"), or None if an element is missing."""
        ...

    def stat(self, fid: Fid) -> FileStat:
        """Tstat: at least is_dir and mtime (seconds)."""
        ...

    def create(self, parent: Fid, name: str, perm: int) -> Fid:
        """Tcreate `name` in directory `parent` with Dir.mode `perm` (the server applies its
        permission rules, as hjfs's chancreat does); raises FsRefused if it exists."""
        ...

    def write(self, fid: Fid, offset: int, data: bytes | memoryview) -> None:
        """Twrite `data` at byte `offset`: one write(2) of mkfs, bytes beyond the end extend
        the file, a gap before `offset` reads as zeros."""
        ...

    def wstat(self, fid: Fid, change: Wstat) -> None:
        """Twstat the fields of `change` that are not None; a `name` renames in place."""
        ...


@runtime_checkable
class BulkCopy(Protocol[Fid_contra]):
    """Optional: copy a whole source into `fid` (freshly created, empty) in one request.

    The result - blocks, sizes, versions, times - must equal what the writes
    of `imagebuild.fs.mkfs.copy_writes(source)` would leave; mkfs calls this
    instead of `write` when the server has it.
    """

    def copy(self, fid: Fid_contra, source: SourceFile) -> None:
        """Fill `fid` with `source`'s bytes; InputError when the source
        cannot be read or changed size.
        """
        ...


# -- readers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FsSummary:
    """What `df` reports (blocks whose count is 0 are free) and what the tree holds.

    Counts are blocks of `block_size` bytes; `files`/`directories` count
    entries (the root included), `bytes` the files' lengths.  Subclasses
    set `fs_type`, the name printed first.
    """

    fs_type: ClassVar[str] = "fs"

    blocks_total: int
    blocks_used: int
    blocks_free: int
    files: int
    directories: int
    bytes: int
    block_size: int

    def __str__(self) -> str:
        return (
            f"{self.fs_type}: {self.blocks_used} of {self.blocks_total} blocks used "
            f"({self.blocks_free} free), {self.directories} directories, "
            f"{self.files} files, {self.bytes} bytes"
        )


class EntryStat(Protocol):
    """One directory entry as a reader reports it (stat(5)'s Dir)."""

    @property
    def name(self) -> str: ...

    @property
    def mode(self) -> int: ...  # Plan 9 Dir.mode

    @property
    def uid(self) -> str: ...

    @property
    def gid(self) -> str: ...

    @property
    def length(self) -> int: ...  # bytes; 0 for directories

    @property
    def mtime(self) -> int: ...

    @property
    def is_dir(self) -> bool: ...


def count_tree(entries: Iterable[tuple[bool, int]]) -> tuple[int, int, int]:
    """(files, directories, bytes) of a walk given as (is_dir, length) per entry.

    `bytes` sums the files' lengths; a caller whose walk leaves out the root
    adds it to `directories` itself.
    """
    files = dirs = nbytes = 0
    for is_dir, length in entries:
        if is_dir:
            dirs += 1
        else:
            files += 1
            nbytes += length
    return files, dirs, nbytes


class FsReader(Protocol):
    """Read access to a built file system (ls, cat, inspect, fsck).

    Paths are rooted and `/` separated.  A missing path or a file where a
    directory is wanted raises the reader's own ImageBuildError subclass; a
    corrupt image raises ImageFormatError.  No method may loop forever,
    recurse on image data or allocate more than the partition could hold.
    """

    def stat(self, path: str) -> EntryStat:
        """The entry at `path` (stat(2)); the root for `/`."""
        ...

    def listdir(self, path: str = "/") -> list[str]:
        """The names in directory `path`."""
        ...

    def scandir(self, path: str = "/") -> list[EntryStat]:
        """The entries of directory `path`, as `stat` reports them."""
        ...

    def read(self, path: str) -> bytes:
        """The whole file; for large files use `iter_read`."""
        ...

    def iter_read(self, path: str) -> Iterator[bytes]:
        """The file's bytes in pieces of bounded size, holes as zeros."""
        ...

    def walk(self, path: str = "/") -> Iterator[tuple[str, EntryStat]]:
        """Every entry under `path` as (rooted path, entry), without recursion."""
        ...

    def summary(self) -> FsSummary:
        """Block counts (df) and the tree's directory, file and byte totals."""
        ...


__all__ = [
    "DMAPPEND",
    "DMDIR",
    "DMEXCL",
    "DMTMP",
    "BulkCopy",
    "EntryStat",
    "FileServer",
    "FileStat",
    "FsReader",
    "FsRefused",
    "FsSummary",
    "SourceFile",
    "Wstat",
    "count_tree",
]
