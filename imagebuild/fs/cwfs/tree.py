"""cwfs's file operations on a Volume: create, write, wstat, truncate, remove, walk.

Each operation changes the Dentry and blocks as the 9P handler in
sys/src/cmd/cwfs/9p2.c does: fs_create() (first free slot, a new Tdir block
when every slot is taken, the parent's mode masking the permissions, the qid
from qidpathgen(), accessdir() on both), fs_write() (one accessdir() per write:
mtime, muid and qid.version), fs_wstat() (mode, mtime, name, uid, gid; atime
on every wstat; the parent's accessdir() on a rename), dtrunc() (frees
indirect blocks, then direct ones, highest first), doremove(); block
addressing is dentry.c rel2abs()/indfetch().
"""

from __future__ import annotations

from dataclasses import dataclass

from imagebuild.errors import LayoutError
from imagebuild.fs.cwfs.layout import (
    BUFSIZE,
    DALLOC,
    DAPND,
    DDIR,
    DIRPERBUF,
    DLOCK,
    DTMP,
    INDPERBUF,
    NAMELEN,
    NDBLOCK,
    NIBLOCK,
    QPDIR,
    RBUFSIZE,
    Dentry,
    Tdir,
    Tfile,
    Tind1,
    dentry_at,
    get_off,
    new_block,
    put_dentry,
    put_off,
)
from imagebuild.fs.cwfs.volume import Volume
from imagebuild.fs.proto import DMAPPEND, DMDIR, DMEXCL, DMTMP

FREAD, FWRITE = 1, 2


@dataclass(frozen=True)
class Node:
    """Where a Dentry lives (File.addr, File.slot) and its parent (the Wpath)."""

    addr: int
    slot: int
    parent: Node | None = None


def mkmode9p1(mode: int) -> int:
    """9p2.c mkmode9p1(): a 9P mode as Dentry.mode."""
    m = DALLOC | (mode & 0o777)
    if mode & DMEXCL:
        m |= DLOCK
    if mode & DMAPPEND:
        m |= DAPND
    if mode & DMDIR:
        m |= DDIR
    if mode & DMTMP:
        m |= DTMP
    return m


def mkmode9p2(mode: int) -> int:
    """9p2.c mkmode9p2(): Dentry.mode as a 9P mode."""
    m = mode & 0o777
    if mode & DLOCK:
        m |= DMEXCL
    if mode & DAPND:
        m |= DMAPPEND
    if mode & DDIR:
        m |= DMDIR
    if mode & DTMP:
        m |= DMTMP
    return m


def name_problem(name: bytes) -> str | None:
    """sub.c checkname(): no control characters or '/', not . or .., shorter than NAMELEN."""
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return "name is . or .."
    if len(name) >= NAMELEN:
        return f"name longer than {NAMELEN - 1} bytes"
    if any(c < 0o40 or c == 0x2F for c in name[1:]):
        return "control character or / in name"
    return None


@dataclass
class _DirInfo:
    node: Node
    names: dict[bytes, Node]
    free: int  # the first free slot number (slot + block * DIRPERBUF)


class FileTree:
    """The 9P-level operations on one file system, at a fixed clock `now`."""

    def __init__(self, volume: Volume, now: int, root_addr: int) -> None:
        self.v = volume
        self.now = now
        self.root = Node(root_addr, 0)
        self.pending: dict[int, bytearray] = {}  # data blocks still being filled
        self.dirs: dict[int, _DirInfo] = {}  # by the directory's qid path
        self.open_indirect: set[int] = set()

    # -- Dentry access --------------------------------------------------------------------------
    def get(self, node: Node) -> Dentry:
        return dentry_at(self.v.block(node.addr), node.slot)

    def put(self, node: Node, d: Dentry) -> None:
        put_dentry(self.v.block(node.addr), node.slot, d)
        self.v.dirty(node.addr)

    def accessdir(self, d: Dentry, f: int, uid: int) -> None:
        """dentry.c accessdir()."""
        d.atime = self.now
        if f & FWRITE:
            d.mtime = self.now
            d.muid = uid
            d.version = (d.version + 1) & 0xFFFFFFFF

    def touch(self, node: Node, d: Dentry) -> None:
        """accessdir(FREAD) as walkname() and attach make it: the atime, and the Dentry's block
        marked modified (Bmod) even when the time is unchanged.  This keeps every directory
        on the way to a changed file dirty, which the dump's cwrecur() relies on to reach it
        (cw.c cfsdump() walks every block only under noatime)."""
        if d.atime != self.now:
            d.atime = self.now
            self.put(node, d)
        else:
            self.v.dirty(node.addr)

    # -- block addressing (dentry.c rel2abs/indfetch) -------------------------------------------
    def rel2abs(self, d: Dentry, a: int, tag: int) -> int:
        """Block `a` of the file, allocated with `tag` when missing and tag != 0."""
        qpath = d.qpath
        if a < NDBLOCK:
            addr = d.dblock[a]
            if not addr and tag:
                addr = self._alloc(tag, qpath)
                d.dblock[a] = addr
            return addr
        a -= NDBLOCK
        span = 1
        for i in range(NIBLOCK):
            span *= INDPERBUF
            if a < span:
                addr = d.iblocks[i]
                if not addr and tag:
                    addr = self._alloc(Tind1 + i, qpath)
                    d.iblocks[i] = addr
                div = span
                for level in range(i, -1, -1):
                    div //= INDPERBUF
                    child_tag = tag if level == 0 else Tind1 + level - 1
                    addr = self._indfetch(addr, (a // div) % INDPERBUF, child_tag, qpath)
                return addr
            a -= span
        raise LayoutError("cwfs: file larger than 4-deep indirect blocks reach")

    def _alloc(self, tag: int, qpath: int) -> int:
        if tag == Tfile:
            addr = self.v.bufalloc(tag, qpath, keep=False)
            self.pending[addr] = new_block(tag, qpath)
            return addr
        addr = self.v.bufalloc(tag, qpath)
        if tag != Tdir:
            self.open_indirect.add(addr)
        return addr

    def _indfetch(self, addr: int, index: int, tag: int, qpath: int) -> int:
        if not addr:
            return 0
        ind = self.v.block(addr)
        child = get_off(ind, index)
        if not child and tag:
            child = self._alloc(tag, qpath)
            put_off(ind, index, child)
            self.v.dirty(addr)
        return child

    def blocks_of(self, d: Dentry) -> list[int]:
        """Every data block address of d in file order, 0 for holes, up to its size."""
        count = (d.size + BUFSIZE - 1) // BUFSIZE if not d.is_dir else 1 << 62
        out: list[int] = []
        for a in range(NDBLOCK):
            if len(out) >= count:
                return out
            out.append(d.dblock[a])
        for i in range(NIBLOCK):
            self._walk_ind(d.iblocks[i], i, out, count)
            if len(out) >= count:
                break
        return out[:count] if not d.is_dir else [a for a in out if a]

    def _walk_ind(self, addr: int, depth: int, out: list[int], count: int) -> None:
        n = INDPERBUF ** (depth + 1)
        if not addr:
            if count < 1 << 62:
                out.extend([0] * min(n, count - len(out)))
            return
        ind = self.v.block(addr)
        for k in range(INDPERBUF):
            if len(out) >= count:
                return
            child = get_off(ind, k)
            if depth == 0:
                out.append(child)
            else:
                self._walk_ind(child, depth - 1, out, count)

    # -- directories ----------------------------------------------------------------------------
    def entries(self, node: Node) -> list[tuple[Node, Dentry]]:
        d = self.get(node)
        out = []
        for a in range(1 << 30):
            addr = self.rel2abs(d, a, 0)
            if not addr:
                break
            block = self.v.block(addr)
            for slot in range(DIRPERBUF):
                e = dentry_at(block, slot)
                if e.allocated:
                    out.append((Node(addr, slot + a * DIRPERBUF, node), e))
        return out

    def _dir(self, node: Node) -> _DirInfo:
        """The names in a directory and its first free slot, from one scan, then kept."""
        d = self.get(node)
        info = self.dirs.get(d.qpath)
        if info is None or info.node != node:
            info = _DirInfo(node, {}, self._next_free(d, 0))
            for child, e in self.entries(node):
                info.names[e.name] = child
            self.dirs[d.qpath] = info
        return info

    def _next_free(self, d: Dentry, start: int) -> int:
        """The first unallocated slot number at or after `start` (one past the last block's
        slots when every slot is taken)."""
        a = start // DIRPERBUF
        while True:
            addr = self.rel2abs(d, a, 0)
            if not addr:
                return a * DIRPERBUF
            block = self.v.block(addr)
            for slot in range(start % DIRPERBUF if a == start // DIRPERBUF else 0, DIRPERBUF):
                if not dentry_at(block, slot).allocated:
                    return a * DIRPERBUF + slot
            a += 1

    def forget_dirs(self) -> None:
        """Drop the directory index (block addresses moved, as after a dump)."""
        self.dirs.clear()

    def lookup(self, node: Node, name: bytes) -> Node | None:
        return self._dir(node).names.get(name)

    def walk(self, path: str) -> Node:
        node = self.root
        for elem in [p for p in path.split("/") if p]:
            child = self.lookup(node, elem.encode())
            if child is None:
                raise LayoutError(f"cwfs: {path}: does not exist")
            node = child
        return node

    # -- 9P operations --------------------------------------------------------------------------
    def create(self, parent: Node, name: bytes, perm: int, uid: int,
               owner: tuple[int, int] | None = None) -> Node:  # fmt: skip
        """fs_create(); `owner` is the console's (uid, gid), None for a 9P client."""
        problem = name_problem(name)
        if problem:
            raise LayoutError(f"cwfs: cannot create {name.decode(errors='replace')!r}: {problem}")
        d = self.get(parent)
        if not d.is_dir:
            raise LayoutError(f"cwfs: create {name!r}: parent is not a directory")
        self.accessdir(d, FREAD, uid)
        info = self._dir(parent)
        if name in info.names:
            raise FileExistsError(name.decode(errors="replace"))
        slot1 = info.free  # the first free slot, a new block when every slot is taken
        addr1 = self.rel2abs(d, slot1 // DIRPERBUF, 0) or self.rel2abs(d, slot1 // DIRPERBUF, Tdir)
        path = self.v.qidpathgen()
        if owner is not None:
            nuid, ngid = owner
        else:
            nuid, ngid = uid, d.gid
            perm &= d.mode | ~0o666
            if perm & DMDIR:
                perm &= d.mode | ~0o777
        new = Dentry(name=name, uid=nuid, gid=ngid, path=path, mode=mkmode9p1(perm))
        if perm & DMDIR:
            new.path ^= QPDIR
        self.accessdir(new, FWRITE, uid)
        node = Node(addr1, slot1, parent)
        self.put(node, new)
        self.accessdir(d, FWRITE, uid)
        self.put(parent, d)
        info.names[name] = node
        info.free = self._next_free(d, slot1 + 1)
        return node

    def write(self, node: Node, offset: int, data: bytes, uid: int) -> None:
        """fs_write(): one accessdir(), the size, then the bytes block by block."""
        d = self.get(node)
        self.accessdir(d, FWRITE, uid)
        if d.mode & DAPND:
            offset = d.size
        d.size = max(d.size, offset + len(data))
        done = 0
        while done < len(data):
            a, o = divmod(offset, BUFSIZE)
            n = min(BUFSIZE - o, len(data) - done)
            addr = self.rel2abs(d, a, Tfile)
            block = self.pending.get(addr)
            if block is None:
                block = self.pending[addr] = bytearray(self.v.block(addr))
                self.v.meta.pop(addr, None)
            block[o : o + n] = data[done : done + n]
            if o + n == BUFSIZE:
                self.v.put_data(addr, self.pending.pop(addr))
            done += n
            offset += n
        self.put(node, d)

    def close(self) -> None:
        """Write out the blocks a file left partly filled and its indirect blocks."""
        for addr, block in self.pending.items():
            self.v.put_data(addr, block)
        self.pending.clear()
        for addr in sorted(self.open_indirect):
            self.v.release(addr)
        self.open_indirect.clear()

    def wstat(self, node: Node, uid: int, *, name: bytes | None = None, mode: int | None = None,
              mtime: int | None = None, owner: int | None = None,
              group: int | None = None) -> None:  # fmt: skip
        """fs_wstat() for the fields given; raises FileExistsError on a rename onto a name."""
        d = self.get(node)
        op = False
        if mode is not None:
            if (mode ^ mkmode9p2(d.mode)) & DMDIR:
                raise LayoutError("cwfs: wstat cannot change a directory bit")
            op = op or mode != mkmode9p2(d.mode)
        else:
            mode = mkmode9p2(d.mode)
        if mtime is not None:
            op = op or mtime != d.mtime
        else:
            mtime = d.mtime
        rename = name is not None and name != d.name
        if rename and name is not None:
            problem = name_problem(name)
            if problem:
                raise LayoutError(f"cwfs: cannot rename to {name!r}: {problem}")
            if node.parent is not None and self.lookup(node.parent, name) is not None:
                raise FileExistsError(name.decode(errors="replace"))
            op = True
        nuid = d.uid if owner is None else owner
        ngid = d.gid if group is None else group
        op = op or nuid != d.uid or ngid != d.gid
        if op:
            d.mode = mkmode9p1(mode)
            d.mtime = mtime
            if rename and name is not None:
                if node.parent is not None:
                    names = self._dir(node.parent).names
                    names.pop(d.name, None)
                    names[name] = node
                d.name = name
            d.uid, d.gid = nuid, ngid
            if rename and node.parent is not None:
                pd = self.get(node.parent)
                self.accessdir(pd, FWRITE, uid)
                self.put(node.parent, pd)
        self.accessdir(d, FREAD, uid)
        self.put(node, d)

    def truncate(self, node: Node, uid: int) -> None:
        """dtrunc(): free indirect blocks, then direct ones, highest first; size 0."""
        d = self.get(node)
        for i in range(NIBLOCK - 1, -1, -1):
            self._free(d.iblocks[i], i + 1)
            d.iblocks[i] = 0
        for i in range(NDBLOCK - 1, -1, -1):
            self._free(d.dblock[i], 0)
            d.dblock[i] = 0
        d.size = 0
        self.accessdir(d, FWRITE, uid)
        self.put(node, d)

    def _free(self, addr: int, depth: int) -> None:
        """sub.c buffree() without truncation state: children first, highest index first."""
        if not addr:
            return
        if depth > 0:
            ind = bytes(self.v.block(addr))
            for k in range(INDPERBUF - 1, -1, -1):
                self._free(get_off(ind, k), depth - 1)
        self.pending.pop(addr, None)
        self.open_indirect.discard(addr)
        self.v.buffree(addr)

    def remove(self, node: Node, uid: int) -> None:
        """doremove(): the parent's accessdir(), dtrunc(), then a zeroed Dentry."""
        if node.parent is not None:
            info = self._dir(node.parent)
            info.names.pop(self.get(node).name, None)
            info.free = min(info.free, node.slot)
            pd = self.get(node.parent)
            self.accessdir(pd, FWRITE, uid)
            self.put(node.parent, pd)
        self.truncate(node, uid)
        self.put(node, Dentry())

    def read(self, node: Node) -> bytes:
        d = self.get(node)
        out = bytearray()
        for addr in self.blocks_of(d):
            block = self.pending.get(addr) or (self.v.block(addr) if addr else bytes(RBUFSIZE))
            out += block[:BUFSIZE]
        return bytes(out[: d.size]) if not d.is_dir else bytes(out)
