"""cwfs as the FileServer disk/mkfs talks to: 9P requests on the main file system's FileTree.

A fid is a tree Node (the Dentry's block and slot, and its parent).  Names of
users go through cwfs's table (uidgid.c strtouid()); where cwfs would store -2
for a name it does not know (and show it as "none"), we refuse, so that every
owner the proto names reads back.  A wstat ends a file's writes (mkfs renames
its temporary file then), so it also writes out the blocks left partly filled.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagebuild.errors import LayoutError
from imagebuild.fs.api import FsRefused, Wstat
from imagebuild.fs.cwfs.tree import FileTree, Node
from imagebuild.fs.cwfs.users import UserTable


@dataclass(frozen=True)
class CwfsFileStat:
    is_dir: bool
    mtime: int


class CwfsServer:
    """fs_create/fs_write/fs_wstat on `tree`, for a client attached as a user of `users`."""

    def __init__(self, tree: FileTree, users: UserTable) -> None:
        self.tree = tree
        self.users = users
        self.uid = 0  # none, until attach

    def _id(self, name: str) -> int:
        uid = self.users.strtouid(name)
        if uid < -1:
            known = ", ".join(u.name for u in self.users.users)
            raise FsRefused(f"unknown cwfs user or group {name!r} (known: {known})")
        return uid

    def attach(self, user: str) -> None:
        self.uid = self._id(user)

    def walk(self, path: str) -> Node | None:
        node = self.tree.root
        for elem in [p for p in path.split("/") if p]:
            if not self.tree.get(node).is_dir:
                return None
            child = self.tree.lookup(node, elem.encode("utf-8", "surrogateescape"))
            if child is None:
                return None
            node = child
        return node

    def stat(self, fid: Node) -> CwfsFileStat:
        d = self.tree.get(fid)
        return CwfsFileStat(d.is_dir, d.mtime & 0xFFFFFFFF)

    def create(self, parent: Node, name: str, perm: int) -> Node:
        try:
            return self.tree.create(parent, name.encode("utf-8", "surrogateescape"), perm, self.uid)
        except FileExistsError:
            raise FsRefused("file exists") from None
        except LayoutError as e:
            raise FsRefused(str(e)) from None

    def write(self, fid: Node, offset: int, data: bytes | memoryview) -> None:
        self.tree.write(fid, offset, bytes(data), self.uid)

    def wstat(self, fid: Node, change: Wstat) -> None:
        self.tree.close()
        mtime = change.mtime
        if mtime is not None:
            mtime &= 0xFFFFFFFF
            mtime -= (1 << 32) if mtime >= 1 << 31 else 0  # Dentry.mtime is a long
        name = None if change.name is None else change.name.encode("utf-8", "surrogateescape")
        try:
            self.tree.wstat(
                fid, self.uid, name=name, mode=change.mode, mtime=mtime,
                owner=None if not change.uid else self._id(change.uid),
                group=None if not change.gid else self._id(change.gid),
            )  # fmt: skip
        except FileExistsError:
            raise FsRefused("file exists") from None
