"""What the proto reader yields: a ProtoEntry per file mkfs would make; Plan 9 mode bits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class ProtoEntry:
    """One file or directory mkfs would create, with the Dir it would pass to create/wstat.

    `uid`/`gid` are None when neither the proto line nor a `uid=`/`gid=`
    option names an owner (mkfs would use the source file's owner; the hjfs
    writer uses its default owner).  `mtime` and `length` are the source's
    as stat(2) reports them.  `missing` marks a directory the proto names
    with a `d` mode whose source does not exist: it is made empty, with the
    proto's mode and owner and the time the proto was read as its mtime.

    The source is kept as a string (`source_path`); `source` makes a Path of
    it when asked: a build holds an entry per file of the tree at once, and a
    Path costs several times the memory of the string it wraps and
    microseconds to make.  Entries are values: they compare equal field by
    field and are not changed once made (`replace` makes a changed copy).
    """

    __slots__ = (
        "gid",
        "length",
        "missing",
        "mode",
        "mtime",
        "origin",
        "path",
        "source_path",
        "uid",
    )

    path: str
    mode: int
    uid: str | None
    gid: str | None
    source_path: str
    mtime: int
    length: int
    origin: str
    missing: bool

    def __init__(
        self,
        path: str,
        mode: int,
        uid: str | None,
        gid: str | None,
        source: str | os.PathLike[str],
        mtime: int,
        length: int,
        origin: str = "",
        missing: bool = False,
    ) -> None:
        self.path = path
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.source_path = source if isinstance(source, str) else os.fspath(source)
        self.mtime = mtime
        self.length = length
        self.origin = origin
        self.missing = missing

    @property
    def source(self) -> Path:
        """Where the data comes from on the host."""
        return Path(self.source_path)

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def replace(self, **changes: Any) -> ProtoEntry:
        """A copy with the fields named in `changes` (`source` included) set anew."""
        fields: dict[str, Any] = {
            "path": self.path, "mode": self.mode, "uid": self.uid, "gid": self.gid,
            "source": self.source_path, "mtime": self.mtime, "length": self.length,
            "origin": self.origin, "missing": self.missing,
        }  # fmt: skip
        fields.update(changes)
        return ProtoEntry(**fields)

    def _key(self) -> tuple[object, ...]:
        return (self.path, self.mode, self.uid, self.gid, self.source_path, self.mtime,
                self.length, self.origin, self.missing)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProtoEntry):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ProtoEntry(path={self.path!r}, mode={self.mode:#o}, uid={self.uid!r}, "
            f"gid={self.gid!r}, source={self.source_path!r}, mtime={self.mtime}, "
            f"length={self.length}, origin={self.origin!r}, missing={self.missing})"
        )


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
