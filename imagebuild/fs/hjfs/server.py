"""hjfs as an in-memory file server: the blocks, directory entries and qids hjfs would make.

`HjfsServer` answers the requests of imagebuild.fs.mkfs (api.FileServer)
and of the console (cons.py) and user table (users.py) as hjfs's fs1.c and
fs2.c would, allocating blocks in the same order, so that block numbers,
qid paths, versions, owners and times come out as on a real hjfs.  Nothing
touches a device here: blocks are kept as their final content (directory
entries, indirect offsets, raw bytes, or a key naming file data) and
writer.py writes them at the end.

File data is copied by a `Copier` (copy.py) chosen by the writer: placing
files without reading them, or reading them to find their holes.

References (sys/src/cmd/hjfs): fs1.c getblk(), trunc(), delindir(),
newentry(), modified(); fs2.c chancreat(), chanwrite(), chanwstat();
main.c -S (FSNOPERM|FSCHOWN).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeAlias

from imagebuild.errors import LayoutError
from imagebuild.fs.api import DMDIR, FsRefused, SourceFile, Wstat
from imagebuild.fs.hjfs.alloc import Allocator
from imagebuild.fs.hjfs.layout import (
    DALLOC,
    DEPERBLK,
    DUMPROOTQID,
    NDIRECT,
    NINDIRECT,
    OFFPERBLK,
    QTDIR,
    RBLOCK,
    ROOTQID,
    SUPERBLK,
    Dentry,
    UserTable,
    default_users,
    indirect_path,
    name_problem,
    ref_blocks,
)
from imagebuild.fs.mkfs import MKFSTMP

if TYPE_CHECKING:
    from imagebuild.fs.hjfs.copy import Copier

ADM_UID = -1  # writeusers() and createroot() act as uid -1 ("adm")
_ZERO_RBLOCK = bytes(RBLOCK)

DirBlock: TypeAlias = "list[Dentry | None]"
Offsets: TypeAlias = "array[int]"
# a block's final content: dentries, indirect offsets, raw bytes, or file data (an int key)
BlockContent: TypeAlias = "DirBlock | Offsets | bytes | int"


@dataclass(slots=True)
class Node:
    """A fid: a Dentry, where it lives (hjfs's Loc: block and index), its path, entry count."""

    dentry: Dentry
    blk: int
    deind: int
    path: str
    entries: int = 0


def _storable(name: str) -> bytes:
    """A name as hjfs stores it (UTF-8); FsRefused if it cannot (too long, control bytes)."""
    name_bytes = name.encode("utf-8", "surrogateescape")
    problem = name_problem(name_bytes)
    if problem:
        raise FsRefused(f"hjfs cannot store this name: {problem}")
    return name_bytes


_MKFSTMP_BYTES = MKFSTMP.encode()


def _parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class HjfsServer:
    """The fs partition of `size` 4096-byte blocks, with hjfs's clock stopped at `now`."""

    def __init__(self, size: int, now: int, copier: Copier) -> None:
        self.size = size
        self.now = now
        self.copier = copier
        self.fstart = SUPERBLK + 1
        self.fend = self.fstart + ref_blocks(size)
        self.alloc = Allocator(size, self.fend)
        self.qidpath = DUMPROOTQID + 1
        self.blocks: dict[int, BlockContent] = {}
        self.paths: dict[str, Node] = {}
        self.users = UserTable(default_users())
        self.uids: dict[str, int] = {}  # user and group names mkfs looked up
        self.root = 0
        self.creator = ADM_UID  # the attached user

    # -- ream ---------------------------------------------------------------------------------
    def ream(self) -> None:
        """fs1.c ream() + createroot(): root and dump root share the first free block."""
        if self.fend >= self.size:
            raise LayoutError(
                f"hjfs: a device of {self.size} blocks has no room past its "
                f"{self.fend - self.fstart} reference-count blocks"
            )
        self.root = self.alloc.getfree()
        root = Dentry(name=b"/", mode=DALLOC | 0o775, path=ROOTQID, type=QTDIR)
        root.uid = root.muid = root.gid = ADM_UID
        root.mtime = root.atime = self.now
        dump = replace(root, db=[0] * NDIRECT, ib=[0] * NINDIRECT)
        self.blocks[self.root] = [root, dump] + [None] * (DEPERBLK - 2)
        self.paths["/"] = Node(root, self.root, 0, "/")
        self.alloc.freelist = []  # initfs() creates the free list after ream

    # -- blocks -------------------------------------------------------------------------------
    def modified(self, d: Dentry, uid: int) -> None:
        """fs1.c modified(): every change stamps the time, the modifier and a new version."""
        d.mtime = d.atime = self.now
        d.muid = uid
        d.vers = (d.vers + 1) & 0xFFFFFFFF

    def getblk(self, d: Dentry, blk: int, create: bool) -> tuple[int, bool]:
        """fs1.c getblk(): the device block of file block `blk`, allocating on the way.

        Returns (block, new); block 0 when absent and not creating.  New
        indirect blocks are allocated level by level before the data block.
        """
        if not create and indirect_path(blk) is not None:
            table, index = self._leaf(d, blk, create=False)
            if table is None:
                return 0, False
        else:
            table, index = self._leaf(d, blk, create=True)
        assert table is not None
        if table[index] == 0:
            if not create:
                return 0, False
            table[index] = self.alloc.getfree()
            return table[index], True
        return table[index], False

    def place(self, d: Dentry, touched: Sequence[int]) -> list[int]:
        """getblk(GBCREATE) for ascending file blocks: their device blocks, allocating as needed.

        The same allocations in the same order as getblk block by block: the
        indirect blocks on the way to each table of pointers, then the data
        blocks it lacks.
        """
        n = len(touched)
        if 0 < n <= NDIRECT and touched[-1] < NDIRECT and not any(d.db):
            new = self.alloc.getfree_many(n)  # a small file's first blocks, all direct
            db = d.db
            for bl, b in zip(touched, new, strict=True):
                db[bl] = b
            return new
        out: list[int] = []
        i = 0
        while i < len(touched):
            leaf, k0 = self._leaf(d, touched[i], create=True)
            assert leaf is not None
            lo = touched[i] - k0
            hi = lo + (NDIRECT if lo == 0 else OFFPERBLK)
            j = bisect_left(touched, hi, i)  # touched[i:j] hang below this table
            missing = [bl - lo for bl in touched[i:j] if leaf[bl - lo] == 0]
            new = self.alloc.getfree_many(len(missing))
            for k, b in zip(missing, new, strict=True):
                leaf[k] = b
            out += new if len(new) == j - i else [leaf[bl - lo] for bl in touched[i:j]]
            i = j
        return out

    def _leaf(
        self, d: Dentry, blk: int, *, create: bool
    ) -> tuple[list[int] | Offsets | None, int]:
        """The table holding file block `blk`'s pointer and the pointer's index in it,
        allocating the indirect blocks on the way as getblk does (None if absent)."""
        where = indirect_path(blk)
        if where is None:
            return d.db, blk
        level, indexes = where
        table: list[int] | Offsets = d.ib
        index = level
        for next_index in indexes:
            if table[index] == 0:
                if not create:
                    return None, 0
                table[index] = self.alloc.getfree()
                self.blocks[table[index]] = array("Q", bytes(8 * OFFPERBLK))
            content = self.blocks[table[index]]
            assert isinstance(content, array)
            table, index = content, next_index
        return table, index

    def _delindir(self, table: list[int] | Offsets, index: int, depth: int) -> None:
        """fs1.c delindir(): free an indirect tree, children first, zeroing the pointers."""
        b = table[index]
        if b == 0:
            return
        if depth > 0:
            content = self.blocks.get(b)
            if isinstance(content, array):
                for k in range(OFFPERBLK):
                    if content[k]:
                        self._delindir(content, k, depth - 1)
        self.alloc.putfree(b)
        table[index] = 0

    def truncate(self, d: Dentry) -> None:
        """fs1.c trunc(..., 0): free direct blocks in order, then each indirect tree."""
        for i in range(NDIRECT):
            if d.db[i]:
                self.alloc.putfree(d.db[i])
                d.db[i] = 0
        for level in range(NINDIRECT):
            self._delindir(d.ib, level, level + 1)
        d.size = 0

    def forget(self, numbers: list[int]) -> None:
        """File data not kept in the model goes to `numbers`: blocks freed earlier (a truncated
        /adm/users) lose their old content."""
        if not self.blocks.keys().isdisjoint(numbers):
            for b in numbers:
                self.blocks.pop(b, None)

    # -- requests as a uid (console, users, mkfs) -------------------------------------------
    def newentry(
        self, parent: Node, name: bytes, perm: int, uid: int, *, noperm: bool,
        path: str | None = None,
    ) -> Node:
        """fs2.c chancreat(): newentry (maybe a new directory block), newqid, modified(parent).

        `noperm` is the console's CHFNOPERM: the parent's permissions do not
        mask `perm`.  The new node is registered under its path (`path`, or
        the parent's with `name` added).
        """
        pd = parent.dentry
        bi, slot = divmod(parent.entries, DEPERBLK)
        blk = pd.db[bi] if bi < NDIRECT else 0
        if not blk:
            blk, new = self.getblk(pd, bi, create=bi == pd.size)
            if new:
                self.blocks[blk] = [None] * DEPERBLK
                pd.size = bi + 1
        qid = self.qidpath
        self.qidpath = qid + 1
        now = self.now
        pd.mtime = pd.atime = now  # modified()
        pd.muid = uid
        pd.vers = (pd.vers + 1) & 0xFFFFFFFF
        if not noperm:
            if perm & DMDIR:
                perm &= ~0o777 | (pd.mode & 0o777)
            else:
                perm &= ~0o666 | (pd.mode & 0o666)
        d = Dentry(name, uid, uid, pd.gid, DALLOC | (perm & 0o777), qid, 0, (perm >> 24) & 0xFF,
                   0, [0] * NDIRECT, [0] * NINDIRECT, now, now)  # fmt: skip
        content = self.blocks[blk]
        assert isinstance(content, list)
        content[slot] = d
        parent.entries += 1
        if path is None:
            path = parent.path.rstrip("/") + "/" + name.decode("utf-8", "surrogateescape")
        node = self.paths[path] = Node(d, blk, slot, path)
        return node

    def setstat(
        self,
        node: Node,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime: int | None = None,
        name: bytes | None = None,
        by: int = ADM_UID,
    ) -> None:
        """fs2.c chanwstat() for the fields given; a rename marks the parent modified by `by`."""
        d = node.dentry
        if uid is not None:
            d.uid = uid
        if gid is not None:
            d.gid = gid
        if mtime is not None:
            d.mtime = mtime & 0xFFFFFFFF  # Dir.mtime is 32 bits on the wire
        if mode is not None:
            d.mode = (d.mode & ~0o777) | (mode & 0o777)
            d.type = (mode >> 24) & 0xFF
        if name is not None:
            self.rename(node, name, name.decode("utf-8", "surrogateescape"), by)

    def rename(self, node: Node, name: bytes, text: str, by: int | None = None) -> None:
        """chanwstat()'s rename in place to `name` (`text` decoded): the parent is modified
        by `by` (the attached user if None)."""
        node.dentry.name = name
        paths = self.paths
        parent_path = _parent_of(node.path)
        pd = paths[parent_path].dentry
        pd.mtime = pd.atime = self.now  # modified()
        pd.muid = self.creator if by is None else by
        pd.vers = (pd.vers + 1) & 0xFFFFFFFF
        if paths.get(node.path) is node:
            del paths[node.path]
        node.path = (parent_path + "/" if parent_path != "/" else "/") + text
        paths[node.path] = node

    def write_bytes(self, node: Node, offset: int, data: bytes | memoryview, uid: int) -> None:
        """fs2.c chanwrite() of literal bytes, kept in the model."""
        d = node.dentry
        end = offset + len(data)
        i = offset
        while i < end:
            bl, r = divmod(i, RBLOCK)
            rn = min(RBLOCK - r, end - i)
            b, new = self.getblk(d, bl, create=True)
            old = self.blocks.get(b)
            block = bytearray(RBLOCK) if new or not isinstance(old, bytes) else bytearray(old)
            block[r : r + rn] = data[i - offset : i - offset + rn]
            self.blocks[b] = bytes(block)
            i += rn
        self.modified(d, uid)
        d.size = max(d.size, end)

    def read_literal(self, node: Node) -> bytes:
        """The bytes of a file written with write_bytes (holes as zeros)."""
        d = node.dentry
        out = bytearray()
        for bl in range((d.size + RBLOCK - 1) // RBLOCK):
            b, _ = self.getblk(d, bl, create=False)
            content = self.blocks.get(b) if b else None
            out += content if isinstance(content, bytes) else _ZERO_RBLOCK
        return bytes(out[: d.size])

    def uid_of(self, name: str) -> int:
        """A user or group name's id in the current table; FsRefused if unknown."""
        uid = self.uids.get(name)
        if uid is None:
            uid = self.users.name2uid(name)
            if uid is None:
                known = ", ".join(u.name for u in self.users.users)
                raise FsRefused(f"unknown hjfs user or group {name!r} (known: {known})")
            self.uids[name] = uid
        return uid

    # -- api.FileServer -----------------------------------------------------------------------
    def attach(self, user: str) -> None:
        """Tattach: mkfs's requests are made as `user` from now on."""
        self.uids = {}  # the user table does not change while mkfs runs
        uid = self.users.name2uid(user)
        if uid is None:
            raise FsRefused("hjfs answers 'no such user' to its attach")
        self.creator = uid

    def walk(self, path: str) -> Node | None:
        """The node at rooted `path`, None if it does not exist."""
        return self.paths.get(path)

    def stat(self, fid: Node) -> Dentry:
        """The node's Dentry (is_dir, mtime in seconds, ...)."""
        return fid.dentry

    def create(self, parent: Node, name: str, perm: int) -> Node:
        """chancreat() as the attached user; FsRefused for a name hjfs cannot store or that
        exists."""
        name_bytes = _MKFSTMP_BYTES if name == MKFSTMP else _storable(name)
        ppath = parent.path
        path = (ppath + "/" if ppath != "/" else "/") + name
        if path in self.paths:
            raise FsRefused("file exists")
        return self.newentry(parent, name_bytes, perm, self.creator, noperm=False, path=path)

    def write(self, fid: Node, offset: int, data: bytes | memoryview) -> None:
        """chanwrite() of `data` at byte `offset`, kept in the model (one modified())."""
        self.write_bytes(fid, offset, data, self.creator)

    def wstat(self, fid: Node, change: Wstat) -> None:
        """chanwstat(); FsRefused for an unknown user or group or a name hjfs cannot store."""
        mode, uid, gid, mtime, name = change
        uids = self.uids
        uid_n = None if uid is None else uids[uid] if uid in uids else self.uid_of(uid)
        gid_n = None if gid is None else uids[gid] if gid in uids else self.uid_of(gid)
        name_bytes = None if name is None else _storable(name)
        self.setstat(fid, mode=mode, uid=uid_n, gid=gid_n, mtime=mtime)
        if name_bytes is not None:  # renamed by the attached user, not setstat's adm
            assert name is not None
            self.rename(fid, name_bytes, name)

    def copy(self, fid: Node, source: SourceFile) -> None:
        """api.BulkCopy: what mkfs's writes of `source` leave, by the writer's Copier."""
        if source.length == 0:
            return
        writes = self.copier.copy(self, fid.dentry, source)
        d = fid.dentry
        d.mtime = d.atime = self.now
        d.muid = self.creator
        d.vers = (d.vers + writes) & 0xFFFFFFFF
        d.size = source.length


__all__ = ["ADM_UID", "BlockContent", "HjfsServer", "Node"]
