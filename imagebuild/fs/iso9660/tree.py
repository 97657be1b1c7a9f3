"""mk9660's in-memory tree (iso9660.h struct Direc; direc.c adddirec, walkdirec, copydirec).

Source: sys/src/cmd/disk/9660/dump9660.c (addprotofile), direc.c.  Built from
proto entries (fs.proto.read_proto) with the children of each directory in
strcmp order of their UTF-8 names; the first proto line for a path wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuild.fs.iso9660 import names
from imagebuild.fs.iso9660.voldesc import IsoFormatError
from imagebuild.fs.proto import DMDIR, ProtoEntry

if TYPE_CHECKING:
    from imagebuild.fs.iso9660.writer import Mk9660Options

MAX_U32 = 0xFFFFFFFF
DEFAULT_OWNER = "sys"  # dump9660.c gives the root sys/sys; mkfs would use the source's owner


@dataclass(eq=False)
class Direc:
    """A file or directory of one tree (iso9660.h struct Direc)."""

    name: str
    mode: int
    uid: str
    gid: str
    mtime: int
    source: Path | None = None
    length: int = 0
    block: int = 0
    children: list[Direc] = field(default_factory=list)
    bad: bool = False  # Dbadname
    confname: str = ""
    # (offset in extent, record length, is a directory, identifier, child) per record
    layout: list[tuple[int, int, bool, bytes, Direc | None]] = field(default_factory=list)

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)

    def walk(self, path: str) -> Direc | None:
        """walkdirec(): follow real names."""
        node: Direc | None = self
        for elem in path.strip("/").split("/"):
            if node is None or not elem:
                return node
            node = next((c for c in node.children if c.name == elem), None)
        return node

    def copy(self) -> Direc:
        """copydirec(): the Joliet tree starts as a copy (files share block and length)."""
        twin = Direc(self.name, self.mode, self.uid, self.gid, self.mtime, self.source,
                     self.length, self.block)
        twin.children = [c.copy() for c in self.children]
        return twin


def _check_name(path: str, name: str) -> None:
    bad = sorted({c for c in name if ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        raise IsoFormatError(f"{path}: mk9660 cannot store a name with control characters")
    if any(ord(c) > 0xFFFF for c in name):
        raise IsoFormatError(
            f"{path}: mk9660 cannot store characters beyond U+FFFF in a Joliet name"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise IsoFormatError(f"{path}: name is not valid UTF-8") from None


def build_tree(entries: Sequence[ProtoEntry], options: Mk9660Options) -> tuple[Direc, list[str]]:
    """addprotofile()/adddirec(): the in-memory tree, children in strcmp order; the first
    line for a path wins (mk9660 warns when a file is listed twice)."""
    root = Direc("", DMDIR | 0o755, "sys", "sys", options.now)
    index: dict[str, Direc] = {"": root}
    kids: dict[int, dict[str, Direc]] = {id(root): {}}
    warnings: list[str] = []
    for entry in entries:
        path = entry.path.strip("/")
        if not path:
            continue
        parent_path, _, name = path.rpartition("/")
        where = f"{entry.origin}: /{path}" if entry.origin else f"/{path}"
        parent = index.get(parent_path)
        if parent is None or not parent.is_dir:
            raise IsoFormatError(f"{where}: error in proto file: no directory /{parent_path}")
        _check_name(where, name)
        siblings = kids[id(parent)]
        if name in siblings:
            if not entry.is_dir:
                warnings.append(f"warning: proto lists {path} twice")
            continue
        mtime = entry.mtime
        if options.pinned_time is not None:
            mtime = min(mtime, options.pinned_time)
        if not entry.is_dir and entry.length > MAX_U32:
            raise IsoFormatError(
                f"{where}: {entry.length} bytes: ISO 9660 sizes are 32 bits (at most {MAX_U32})"
            )
        node = Direc(
            name,
            entry.mode & MAX_U32,
            entry.uid or DEFAULT_OWNER,
            entry.gid or DEFAULT_OWNER,
            max(mtime, 0),
            None if entry.is_dir else entry.source,
            0 if entry.is_dir else entry.length,
        )
        siblings[name] = node
        index[path] = node
        if node.is_dir:
            kids[id(node)] = {}
    for direc in index.values():
        if direc.is_dir:
            direc.children = [kids[id(direc)][n] for n in names.sorted_names(list(kids[id(direc)]))]
    return root, warnings
