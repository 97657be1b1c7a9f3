"""An independent cwfs64x reader for the tests, written from 9front's C sources, not our writer.

Layout facts (sys/src/cmd/cwfs): RBUFSIZE 16384, the 12-byte Tag {short pad,
short tag, vlong path} at byte 16372 of every block (iobuf.c checktag);
Dentry is 260 packed bytes: name[144], short uid, gid, ushort mode, short muid,
vlong qid.path, ulong qid.version, vlong size, vlong dblock[6], vlong
iblocks[4], long atime, mtime (portdat.h); Cache is ten vlongs then two longs
(maddr, msize, caddr, csize, fsize, wsize, wmax, sbaddr, cwraddr, roraddr);
a bucket is a long then 135 Centry {ushort age, short state, vlong waddr},
ten buckets a block; with newcache the slot of entry i of bucket bn is
caddr + bn + i*msize (cw.c cwio).  Tag numbers: Tsuper 1, Tfile 5, Tfree 6,
Tbuck 7, Tcache 9, Tconfig 10, Tdir 11, Tind1..Tind4 12..15.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

BS = 16384
PAYLOAD = BS - 12
T_SUPER, T_FILE, T_FREE, T_BUCK, T_CACHE, T_CONFIG, T_DIR, T_IND1 = 1, 5, 6, 7, 9, 10, 11, 12


def tag_of(block: bytes) -> tuple[int, int]:
    _pad, tag, path = struct.unpack_from("<hhq", block, PAYLOAD)
    return tag, path


@dataclass
class Entry:
    name: str
    uid: int
    gid: int
    mode: int
    muid: int
    qpath: int
    qvers: int
    size: int
    direct: list[int]
    indirect: list[int]
    atime: int
    mtime: int

    @property
    def isdir(self) -> bool:
        return bool(self.mode & 0x4000)


def entry(block: bytes, slot: int) -> Entry:
    o = slot * 260
    name = block[o : o + 144].split(b"\0")[0].decode("utf-8", "surrogateescape")
    uid, gid, mode, muid = struct.unpack_from("<hhHh", block, o + 144)
    qpath, qvers, size = struct.unpack_from("<qIq", block, o + 152)
    direct = list(struct.unpack_from("<6q", block, o + 172))
    indirect = list(struct.unpack_from("<4q", block, o + 220))
    atime, mtime = struct.unpack_from("<ii", block, o + 252)
    return Entry(name, uid, gid, mode, muid, qpath, qvers, size, direct, indirect, atime, mtime)


Source = bytes | Callable[[int, int], bytes]  # the bytes, or read(offset, size)


def _reader(src: Source) -> Callable[[int, int], bytes]:
    if isinstance(src, bytes):
        return lambda off, n: src[off : off + n]
    return src


class Image:
    """The main file system of the fscache and fsworm partitions (bytes or read functions)."""

    def __init__(self, cache: Source, worm: Source) -> None:
        self.cread, self.wread = _reader(cache), _reader(worm)
        hdr = self.cblock(2)
        assert tag_of(hdr) == (T_CACHE, 2)
        (self.maddr, self.msize, self.caddr, self.csize, self.fsize, self.wsize, self.wmax,
         self.sbaddr, self.cwraddr, self.roraddr) = struct.unpack_from("<10q", hdr, 0)  # fmt: skip
        self.config = self.cblock(0)[:PAYLOAD].split(b"\0")[0].decode()
        self.slots: dict[int, tuple[int, int]] = {}  # waddr -> (cache block, state)
        for bn in range(self.msize):
            mb = self.cblock(self.maddr + bn // 10)
            base = (bn % 10) * (4 + 135 * 12)
            for i in range(135):
                _age, state, waddr = struct.unpack_from("<Hhq", mb, base + 4 + i * 12)
                if state != 0:
                    assert waddr not in self.slots, waddr
                    self.slots[waddr] = (self.caddr + bn + i * self.msize, state)

    def cblock(self, n: int) -> bytes:
        return self.cread(n * BS, BS)

    def block(self, waddr: int) -> bytes:
        hit = self.slots.get(waddr)
        if hit:
            return self.cblock(hit[0])
        return self.wread(waddr * BS, BS)

    def tagged(self, addr: int, tag: int, path: int) -> bytes:
        b = self.block(addr)
        assert tag_of(b) == (tag, path), (addr, tag_of(b), tag, path)
        return b

    def blocks_of(self, e: Entry) -> list[int]:
        """Direct then indirect block addresses of e (holes as 0), level by level."""
        qp = e.qpath & 0x7FFFFFFF if e.isdir else e.qpath
        out = list(e.direct)

        def walk(addr: int, level: int) -> list[int]:
            if not addr:
                return [0] * (2046 ** (level + 1))
            b = self.tagged(addr, T_IND1 + level, qp)
            ptrs = list(struct.unpack_from("<2046q", b, 0))
            if level == 0:
                return ptrs
            res: list[int] = []
            for p in ptrs:
                res += walk(p, level - 1)
                if len(res) * PAYLOAD > e.size and not e.isdir:
                    break
            return res

        for level, a in enumerate(e.indirect):
            if a:
                out += walk(a, level)
            elif any(e.indirect[level + 1 :]):
                out += [0] * 2046 ** (level + 1)
        return out

    def root(self) -> Entry:
        return entry(self.tagged(self.cwraddr, T_DIR, 1), 0)

    def children(self, d: Entry) -> list[Entry]:
        qp = d.qpath & 0x7FFFFFFF
        out = []
        for a in self.blocks_of(d):
            if not a:
                break
            b = self.tagged(a, T_DIR, qp)
            out += [c for c in (entry(b, s) for s in range(62)) if c.mode & 0x8000]
        return out

    def data(self, e: Entry) -> bytes:
        need = -(-e.size // PAYLOAD)
        addrs = self.blocks_of(e)[:need]
        out = b"".join(self.tagged(a, T_FILE, e.qpath)[:PAYLOAD] if a else bytes(PAYLOAD)
                       for a in addrs)  # fmt: skip
        return out[: e.size]

    def tree(self, top: Entry | None = None) -> dict[str, Entry]:
        """Every path below the root, or below `top` (and "/" itself)."""
        out = {"/": self.root() if top is None else top}
        todo = ["/"]
        while todo:
            p = todo.pop()
            for c in self.children(out[p]):
                cp = ("" if p == "/" else p) + "/" + c.name
                out[cp] = c
                if c.isdir:
                    todo.append(cp)
        return out

    def users(self) -> dict[int, str]:
        """/adm/users: number -> name."""
        tree = self.tree()
        text = self.data(tree["/adm/users"]).decode()
        return {int(line.split(":")[0]): line.split(":")[1] for line in text.splitlines()}


class DumpView(Image):
    """The dump file system (`filsys dump o`) as cw.c roread() reads it: from the cache only
    while the slot is Cdump (2), Cread (3) or Cdump1 (5), otherwise from the worm."""

    def block(self, waddr: int) -> bytes:
        hit = self.slots.get(waddr)
        if hit and hit[1] in (2, 3, 5):
            return self.cblock(hit[0])
        return self.wread(waddr * BS, BS)

    def dumps(self) -> list[tuple[str, Entry]]:
        """Every /yyyy/mmdd[n] in the order cfsdump() made them (slot order), with its root."""
        ro = entry(self.tagged(self.roraddr, T_DIR, 1), 0)
        return [(f"/{y.name}/{d.name}", d) for y in self.children(ro) for d in self.children(y)]
