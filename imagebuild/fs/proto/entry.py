"""What the proto reader yields: a ProtoEntry per file mkfs would make; Plan 9 mode bits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagebuild.errors import ImageBuildError

# Plan 9 Dir.mode bits (libc.h).
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMTMP = 0x04000000
MODE_MASK = 0xFFFFFFFF  # Dir.mode is a 32-bit ulong
NO_MODE = MODE_MASK  # getmode()'s ~0: the proto gave no mode

PROTO_LINE_MAX = 8 * 1024  # Brdline() cannot return longer lines


class ProtoError(ImageBuildError):
    """A proto file is malformed or names a source that cannot be used."""


@dataclass(frozen=True)
class MissingSource:
    """A source the protos name that does not exist, skipped as disk/mkfs skips it.

    `origin` is `proto:line`, `path` the file's path in the new file system,
    `source` where it was looked for.
    """

    origin: str
    path: str
    source: Path

    def __str__(self) -> str:
        return f"{self.origin}: {self.path}: source {self.source} does not exist"


@dataclass(frozen=True, slots=True)
class ProtoEntry:
    """One file or directory mkfs would create, with the Dir it would pass to create/wstat.

    `uid`/`gid` are None when neither the proto line nor a `uid=`/`gid=`
    option names an owner (mkfs would use the source file's owner; the hjfs
    writer uses its default owner).  `mtime` and `length` are the source's
    as stat(2) reports them.  `missing` marks a directory the proto names
    with a `d` mode whose source does not exist: it is made empty, with the
    proto's mode and owner and the time the proto was read as its mtime.
    """

    path: str
    mode: int
    uid: str | None
    gid: str | None
    source: Path
    mtime: int
    length: int
    origin: str = ""
    missing: bool = False

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


__all__ = [
    "DMAPPEND",
    "DMDIR",
    "DMEXCL",
    "DMTMP",
    "MODE_MASK",
    "NO_MODE",
    "PROTO_LINE_MAX",
    "MissingSource",
    "ProtoEntry",
    "ProtoError",
]
