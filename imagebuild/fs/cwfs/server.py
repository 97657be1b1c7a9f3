"""cwfs as the FileServer disk/mkfs talks to: 9P requests on the main file system's FileTree.

A fid names a file by its path, resolved at each request: a dump between two
requests moves directory blocks (cw.c rewalk() redoes open files' walks for
the same reason).  Each walk touches the directories it passes (9p2.c
walkname()'s accessdir(FREAD)), and the attach the root: the same blocks a
real session's walks and rewalk() mark modified, which is what lets the next
dump's cwrecur() reach every block changed since the last one.  Before each
create or write we dump when the cache could not take the next cwgrow()
(dump.py).  Names of users go through cwfs's table (uidgid.c strtouid());
where cwfs would store -2 for a name it does not know (and show it as "none"),
we refuse, so that every owner the proto names reads back.  A wstat ends a
file's writes (mkfs renames its temporary file then), so it also writes out
the blocks left partly filled.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagebuild.errors import LayoutError
from imagebuild.fs.api import FsRefused, Wstat
from imagebuild.fs.cwfs.dump import Dump, needs_dump
from imagebuild.fs.cwfs.tree import FileTree, Node
from imagebuild.fs.cwfs.users import UserTable
from imagebuild.fs.cwfs.volume import CwVolume


@dataclass
class Fid:
    """A walked-to file: its absolute `path` in the tree (cwfs 9p2.c struct File, reduced)."""

    path: str


@dataclass(frozen=True)
class CwfsFileStat:
    """What stat answers for a file: `is_dir` (QTDIR), `mtime` in seconds since the epoch
    (cwfs Dentry.mtime).
    """

    is_dir: bool
    mtime: int


class CwfsServer:
    """fs_create/fs_write/fs_wstat on `tree`, for a client attached as a user of `users`."""

    def __init__(self, tree: FileTree, users: UserTable) -> None:
        self.tree = tree
        self.users = users
        self.uid = 0  # none, until attach
        self.dumps = 0

    def _id(self, name: str) -> int:
        uid = self.users.strtouid(name)
        if uid < -1:
            known = ", ".join(u.name for u in self.users.users)
            raise FsRefused(f"unknown cwfs user or group {name!r} (known: {known})")
        return uid

    def attach(self, user: str) -> None:
        self.uid = self._id(user)
        self.tree.touch(self.tree.root, self.tree.get(self.tree.root))

    def node(self, fid: Fid) -> Node:
        node = self._walk(fid.path)
        if node is None:
            raise FsRefused(f"{fid.path}: file does not exist")
        return node

    def walk(self, path: str) -> Fid | None:
        return Fid(path) if self._walk(path) is not None else None

    def _maybe_dump(self) -> None:
        if isinstance(self.tree.v, CwVolume) and needs_dump(self.tree.v):
            Dump(self.tree).run(self.tree.now)
            self.dumps += 1

    def _walk(self, path: str) -> Node | None:
        node = self.tree.root
        for elem in [p for p in path.split("/") if p]:
            d = self.tree.get(node)
            if not d.is_dir:
                return None
            self.tree.touch(node, d)  # walkname(): accessdir(FREAD) on the directory walked
            child = self.tree.lookup(node, elem.encode("utf-8", "surrogateescape"))
            if child is None:
                return None
            node = child
        return node

    def stat(self, fid: Fid) -> CwfsFileStat:
        d = self.tree.get(self.node(fid))
        return CwfsFileStat(d.is_dir, d.mtime & 0xFFFFFFFF)

    def create(self, parent: Fid, name: str, perm: int) -> Fid:
        self._maybe_dump()
        bname = name.encode("utf-8", "surrogateescape")
        try:
            self.tree.create(self.node(parent), bname, perm, self.uid)
            return Fid(parent.path.rstrip("/") + "/" + name)
        except FileExistsError:
            raise FsRefused("file exists") from None
        except LayoutError as e:
            raise FsRefused(str(e)) from None

    def write(self, fid: Fid, offset: int, data: bytes | memoryview) -> None:
        self._maybe_dump()
        self.tree.write(self.node(fid), offset, bytes(data), self.uid)

    def wstat(self, fid: Fid, change: Wstat) -> None:
        self.tree.close()
        mtime = change.mtime
        if mtime is not None:
            mtime &= 0xFFFFFFFF
            mtime -= (1 << 32) if mtime >= 1 << 31 else 0  # Dentry.mtime is a long
        name = None if change.name is None else change.name.encode("utf-8", "surrogateescape")
        try:
            self.tree.wstat(
                self.node(fid), self.uid, name=name, mode=change.mode, mtime=mtime,
                owner=None if not change.uid else self._id(change.uid),
                group=None if not change.gid else self._id(change.gid),
            )  # fmt: skip
        except FileExistsError:
            raise FsRefused("file exists") from None
        if change.name is not None:
            fid.path = fid.path.rsplit("/", 1)[0] + "/" + change.name
