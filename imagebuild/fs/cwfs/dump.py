"""The cwfs dump: freeze the cache file system onto the WORM (cw.c cfsdump()).

A tree larger than the cache partition cannot be copied in one go: every
block written since the last dump is Cdirty or Cwrite and must stay in its
cache slot, and a full bucket fails the write ("disk cache bucket is full").
An operator copying such a tree runs `dump` on the console when the cache
fills; we do the same, between two 9P requests, when the next cwgrow() would
not find room.  The dump follows cw.c cfsdump(): cwrecur() over the cache
file system (Cdirty blocks become Cdump in place, Cwrite blocks are copied to
fresh worm addresses by split()), the dated entry /yyyy/mmdd[n] in the dump
file system's root (a copy of the frozen root Dentry), cwrecur() over the dump
root, the superblock written to the reserved `next` address, and the cache
header pointed at it; then dumpblock() copies every Cdump block to the WORM,
after which its slot is Cread and can be reused.

Where we differ: cwfs names the day with localtime(); we use UTC.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from imagebuild.errors import LayoutError
from imagebuild.fs.cwfs.layout import (
    ADDFREE,
    CEPERBK,
    DALLOC,
    DIRPERBUF,
    DTMP,
    INDPERBUF,
    NDBLOCK,
    NIBLOCK,
    QPDIR,
    QPROOT,
    RBUFSIZE,
    Cdirty,
    Cdump,
    Cdump1,
    Cnone,
    Cread,
    Cwrite,
    Dentry,
    Tdir,
    Tfile,
    Tind1,
    Tind4,
    Tsuper,
    dentry_at,
    get_off,
    get_tag,
    put_dentry,
    put_off,
)
from imagebuild.fs.cwfs.tree import FWRITE, FileTree, Node
from imagebuild.fs.cwfs.volume import CwVolume

NEAR_EMPTY = 8  # a request allocates at most 2 data and 4 indirect blocks
SLACK = 2  # entries a bucket keeps for Cread blocks rewritten before the grow


def needs_dump(v: CwVolume) -> bool:
    """Whether the next cwgrow() could fail: some bucket lacks a reusable (Cnone/Cread) entry
    for the worm addresses it would add.  Only looked at when the free list is nearly empty."""
    if v.sb.nfree > NEAR_EMPTY or v.room_checked_at == v.cache.fsize:
        return False
    h = v.cache
    need: dict[int, int] = {}
    for a in range(h.fsize, min(h.fsize + ADDFREE, h.wsize)):
        need[a % h.msize] = need.get(a % h.msize, 0) + 1
    for bn, count in need.items():
        b = v.buckets.get(bn)
        if b is None:
            continue
        free = sum(1 for c in b.entry if c.state in (Cnone, Cread))
        if free < count + SLACK:
            return True
    v.room_checked_at = h.fsize  # the answer holds until the next grow (with SLACK to spare)
    return False


class Dump:
    """One cfsdump() of the main file system of `tree`."""

    def __init__(self, tree: FileTree) -> None:
        assert isinstance(tree.v, CwVolume)
        self.tree = tree
        self.v: CwVolume = tree.v
        self.fsize = 0

    def isdirty(self, addr: int, tag: int) -> bool:
        """cw.c isdirty(): Cdirty or Cwrite, or an indirect block in the cache at all.

        cwio(Oread) caches what it reads from the worm (Cread); our model reads it into
        memory instead, so an indirect block read since the last dump counts as cached."""
        s = self.v.state(addr)
        if s in (Cdirty, Cwrite):
            return True
        return Tind1 <= tag <= Tind4 and (s != Cnone or addr in self.v.meta)

    def split(self, addr: int) -> int:
        """cw.c split(): Cdirty -> Cdump in place; Cwrite -> a copy at a fresh worm address."""
        v = self.v
        s = v.state(addr)
        if s == Cdirty:
            v.centry(addr).state = Cdump
            return 0
        if s not in (Cwrite, Cdump1) or self.fsize >= v.cache.wsize:
            return 0
        block = bytes(v.block(addr))
        na = self.fsize
        self.fsize += 1
        v.centry(na).state = Cdirty  # Ogrow
        v.meta[na] = bytearray(block)
        v.changed.add(na)
        v.flush_block(na)  # Owrite: stays Cdirty
        v.centry(na).state = Cdump
        c = v.centry(addr)  # Orele
        if c.state == Cwrite:
            c.state = Cnone
        v.meta.pop(addr, None)
        return na

    def recur(self, addr: int, tag: int, tag1: int, qp: int) -> int:
        """cw.c cwrecur(): dump the dirty blocks below addr; the block's new address or 0."""
        if not self.isdirty(addr, tag):
            return 0
        v = self.v
        if tag == Tdir:
            block = v.block(addr)
            changed = False
            for slot in range(DIRPERBUF):
                d = dentry_at(block, slot)
                if d.mode & (DALLOC | DTMP) != DALLOC:
                    continue
                qp1, t1 = (d.path ^ QPDIR, Tdir) if d.mode & 0x4000 else (d.path, Tfile)
                mod = False
                for j in range(NDBLOCK):
                    if d.dblock[j]:
                        na = self.recur(d.dblock[j], t1, 0, qp1)
                        if na:
                            d.dblock[j], mod = na, True
                for j in range(NIBLOCK):
                    if d.iblocks[j]:
                        na = self.recur(d.iblocks[j], Tind1 + j, t1, qp1)
                        if na:
                            d.iblocks[j], mod = na, True
                if mod:
                    put_dentry(block, slot, d)
                    changed = True
            if changed:
                v.changed.add(addr)
        elif Tind1 <= tag <= Tind4:
            child, ctag1 = (tag1, 0) if tag == Tind1 else (tag - 1, tag1)
            block = v.block(addr)
            changed = False
            for k in range(INDPERBUF):
                a = get_off(block, k)
                if a:
                    na = self.recur(a, child, ctag1, qp)
                    if na:
                        put_off(block, k, na)
                        changed = True
            if changed:
                v.changed.add(addr)
        if addr in v.changed:
            v.flush_block(addr)
        return self.split(addr)

    def run(self, now: int) -> None:
        tree, v = self.tree, self.v
        h = v.cache
        tree.close()
        v.sync()
        self.fsize = h.fsize
        orba = h.cwraddr
        rba = self.recur(orba, Tdir, 0, QPROOT) or orba
        self.check_all_reached()
        v.sb.fsize, v.sb.cwraddr = self.fsize, rba
        h.fsize, h.cwraddr = self.fsize, rba
        if self.fsize + 50 > h.wsize:  # "dump: worm full after dump"
            v.sync()
            self.copy_to_worm()
            tree.root = Node(rba, 0)
            tree.forget_dirs()
            return
        self.date_entry(rba, now)
        v.sync()
        self.fsize = h.fsize
        oroa = h.roraddr
        roa = self.recur(oroa, Tdir, 0, QPROOT) or oroa
        sb = v.sb
        sba = sb.next
        sb.last = h.sbaddr
        sb.next = self.fsize
        self.fsize += 1
        sb.fsize = self.fsize
        sb.roraddr = roa
        old_sbaddr = v.sbaddr
        v.store_super()
        v.flush_block(old_sbaddr)  # the superblock in place, then a copy at the reserved address
        block = v.meta.pop(old_sbaddr)
        v.sbaddr = sba
        v.centry(sba).state = Cdirty  # Ogrow, Owrite, Odump
        v.meta[sba] = block
        v.flush_block(sba)
        v.centry(sba).state = Cdump
        h.fsize, h.roraddr, h.sbaddr = self.fsize, roa, sba
        v.sync()
        self.copy_to_worm()
        tree.root = Node(rba, 0)
        tree.forget_dirs()

    def check_all_reached(self) -> None:
        """After cwrecur() over the main tree: raise LayoutError if a block rewritten since the
        last dump is still Cwrite, because cwrecur() did not reach it and the tree would lose
        the change.  Only the superblock may be (sync() rewrote it in place)."""
        v = self.v
        for bn in sorted(v.buckets):
            for c in v.buckets[bn].entry[:CEPERBK]:
                if c.state == Cwrite and get_tag(v.block(c.waddr))[0] != Tsuper:
                    raise LayoutError(
                        f"cwfs dump: worm block {c.waddr}, changed since the last dump, was not "
                        "reached from the root (cw.c cwrecur()); the image would lose it"
                    )

    def date_entry(self, rba: int, now: int) -> None:
        """/yyyy/mmdd[n] in the dump root: copies of the frozen root Dentry (qid QPROOT)."""
        tree, v = self.tree, self.v
        root = dentry_at(v.block(rba), 0)
        tm = time.gmtime(now)
        year, mmdd = f"{tm.tm_year:04d}".encode(), f"{tm.tm_mon:02d}{tm.tm_mday:02d}".encode()
        ro_node = Node(v.cache.roraddr, 0)
        year_node, n = self._slot(ro_node, lambda d: d.name[:4] == year)
        yd = tree.get(year_node)
        if not yd.allocated:
            yd = Dentry(name=year, uid=root.uid, gid=root.gid, mode=root.mode, path=root.path,
                        version=root.version + n)  # fmt: skip
            tree.put(year_node, yd)
            rd = tree.get(ro_node)
            tree.accessdir(rd, FWRITE, 0)
            tree.put(ro_node, rd)
        rd = tree.get(ro_node)
        rd.atime = now
        tree.put(ro_node, rd)
        same = [0]

        def count(d: Dentry) -> bool:
            same[0] += d.name[:4] == mmdd
            return False

        day_node, n = self._slot(year_node, count)
        name = mmdd + (str(same[0]).encode() if same[0] else b"")
        day = Dentry(**{**root.__dict__, "name": name, "version": root.version + n})
        tree.accessdir(day, FWRITE, 0)
        tree.put(day_node, day)
        yd = tree.get(year_node)
        tree.accessdir(yd, FWRITE, 0)
        tree.put(year_node, yd)

    def _slot(self, node: Node, match: Callable[[Dentry], bool]) -> tuple[Node, int]:
        """The first free slot (or the first entry `match` accepts) of a dump directory, and
        how many blocks were looked at (cfsdump()'s n)."""
        tree = self.tree
        d = tree.get(node)
        a = 0
        while True:
            addr = tree.rel2abs(d, a, Tdir)
            tree.put(node, d)
            block = tree.v.block(addr)
            for slot in range(DIRPERBUF):
                e = dentry_at(block, slot)
                if not e.allocated or match(e):
                    return Node(addr, slot + a * DIRPERBUF, node), a + 1
            a += 1

    def copy_to_worm(self) -> None:
        """dumpblock() until done: every Cdump block to the worm, then Cread."""
        v = self.v
        for bn in sorted(v.buckets):
            for i, c in enumerate(v.buckets[bn].entry[:CEPERBK]):
                if c.state != Cdump:
                    continue
                slot = v.cache.slot_addr(c.waddr, i, v.newcache)
                data = v.device.pread(RBUFSIZE, slot * RBUFSIZE)
                v.worm.pwrite(data, c.waddr * RBUFSIZE)
                c.state = Cread
                v.cache.wmax = max(v.cache.wmax, c.waddr)
