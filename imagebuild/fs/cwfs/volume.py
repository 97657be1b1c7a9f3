"""cwfs block allocation on the two kinds of file system the installer configures.

`main` is a cw device: a cache partition in front of a WORM partition.  Its
superblock's free list starts empty, and cwgrow() hands out the next ADDFREE
worm addresses at a time, marking each Cdirty in the cache map; a block's bytes
live in the cache slot its bucket entry names until a dump copies them to the
WORM.  `other` is a plain device whose ream puts every block on the free list,
chained through Tfree blocks.

References (9front, sys/src/cmd/cwfs): sub.c bufalloc(), addfree(), buffree(),
superream(), rootream(), qidpathgen(); cw.c cwio() (Ogrow, Owrite, Ofree),
getcentry(), cwgrow(), cwfree(), cwream(), dumpblock().

Metadata blocks (superblock, directories, indirect blocks, Tfree blocks) stay
in memory until `finish`; file data goes to the device as soon as a block is
complete, at the address it will keep.
"""

from __future__ import annotations

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import LayoutError
from imagebuild.fs.cwfs.layout import (
    ADDFREE,
    BKPERBLK,
    CACHE_ADDR,
    CEPERBK,
    FBUF,
    FEPERBUF,
    MAXAGE,
    QPDIR,
    QPNONE,
    QPSUPER,
    RBUFSIZE,
    SUPER_ADDR,
    Bucket,
    Cache,
    Cdirty,
    Cdump,
    Centry,
    Cnone,
    Cread,
    Cwrite,
    Superb,
    Tbuck,
    Tcache,
    Tfree,
    Tsuper,
    get_tag,
    new_block,
    set_tag,
)


class Volume:
    """One file system's blocks: the superblock's free list, metadata in memory, data out."""

    cw = False

    def __init__(self, name: str, device: BlockDevice, sbaddr: int) -> None:
        self.name = name
        self.device = device
        self.sbaddr = sbaddr
        self.sb = Superb()
        self.meta: dict[int, bytearray] = {}
        self.changed: set[int] = set()  # metadata blocks in memory that differ from the device

    # -- what each kind of device does differently --------------------------------------------
    def grow(self) -> bool:
        return False

    def freeable(self, addr: int) -> bool:
        """cwfree(): whether a freed block goes back on the free list."""
        return True

    def device_offset(self, addr: int) -> int:
        return addr * RBUFSIZE

    def note_write(self, addr: int) -> None:
        """A block's contents changed (cwio Owrite)."""

    # -- blocks -----------------------------------------------------------------------------
    def block(self, addr: int) -> bytearray:
        """The block at `addr` (getbuf Brd): from memory, else read back from the device."""
        b = self.meta.get(addr)
        if b is None:
            b = bytearray(self.device.pread(RBUFSIZE, self.device_offset(addr)))
            self.meta[addr] = b
        return b

    def put_data(self, addr: int, data: bytes | bytearray) -> None:
        """Write a finished block straight to its place; it is not kept in memory."""
        self.meta.pop(addr, None)
        self.changed.discard(addr)
        self.note_write(addr)
        self.device.pwrite(bytes(data), self.device_offset(addr))

    def dirty(self, addr: int) -> None:
        self.changed.add(addr)

    def release(self, addr: int) -> None:
        """Write a metadata block out now and forget it (a file's indirect blocks at close)."""
        b = self.meta.pop(addr, None)
        if b is not None and addr in self.changed:
            self.changed.discard(addr)
            self.note_write(addr)
            self.device.pwrite(bytes(b), self.device_offset(addr))

    # -- the free list (sub.c) ----------------------------------------------------------------
    def bufalloc(self, tag: int, qpath: int, *, keep: bool = True) -> int:
        """sub.c bufalloc(): pop a block off the free list, growing a cw device when empty."""
        sb = self.sb
        while True:
            n = sb.nfree - 1
            sb.nfree = n
            sb.tfree -= 1
            if n < 0 or n >= FEPERBUF:
                raise LayoutError(f"cwfs {self.name}: bad free list (nfree {n + 1})")
            a = sb.free[n]
            if n <= 0:
                if a == 0:
                    sb.tfree = 0
                    sb.nfree = 1
                    if self.grow():
                        continue
                    raise LayoutError(f"cwfs {self.name}: file system full")
                chain = self.block(a)
                if get_tag(chain)[0] != Tfree:
                    raise LayoutError(f"cwfs {self.name}: free-list block {a} is not Tfree")
                fb = FBUF.unpack_from(chain, 0)
                sb.nfree, sb.free = fb[0], list(fb[1:])
            break
        if keep:
            self.meta[a] = new_block(tag, qpath)
            self.changed.add(a)
        else:
            self.meta.pop(a, None)
            self.changed.discard(a)
        return a

    def addfree(self, addr: int) -> None:
        """sub.c addfree(): push a block; a full list is first saved into that block."""
        sb = self.sb
        n = sb.nfree
        if n >= FEPERBUF:
            chain = bytearray(RBUFSIZE)
            FBUF.pack_into(chain, 0, sb.nfree, *sb.free)
            set_tag(chain, Tfree, QPNONE)
            self.meta[addr] = chain
            self.dirty(addr)
            n = 0
        sb.free[n] = addr
        sb.nfree = n + 1
        sb.tfree += 1
        if addr >= sb.fsize:
            sb.fsize = addr + 1

    def buffree(self, addr: int) -> None:
        """The tail of sub.c buffree(): drop the block and, if cwfree() allows, free it."""
        self.meta.pop(addr, None)
        self.changed.discard(addr)
        if self.freeable(addr):
            self.addfree(addr)

    def qidpathgen(self) -> int:
        """sub.c qidpathgen(): the next qid path, never QPDIR itself."""
        while True:
            self.sb.qidgen += 1
            if self.sb.qidgen != QPDIR:
                return self.sb.qidgen

    def store_super(self) -> None:
        block = self.meta.get(self.sbaddr)
        if block is None:
            block = new_block(Tsuper, QPSUPER)
            self.meta[self.sbaddr] = block
        self.sb.pack_into(block)
        self.dirty(self.sbaddr)

    def flush_block(self, addr: int) -> None:
        """Write one changed metadata block to the device (putbuf); it stays in memory."""
        self.changed.discard(addr)
        self.note_write(addr)
        self.device.pwrite(bytes(self.meta[addr]), self.device_offset(addr))

    def sync(self) -> None:
        """Write every changed metadata block, the superblock too; keep them in memory."""
        self.store_super()
        for addr in sorted(self.changed):
            self.flush_block(addr)

    def finish(self) -> None:
        """Write every metadata block still in memory."""
        self.store_super()
        for addr in sorted(self.changed):
            self.note_write(addr)
            self.device.pwrite(bytes(self.meta[addr]), self.device_offset(addr))
        self.meta.clear()
        self.changed.clear()


class PlainVolume(Volume):
    """A file system on one device (`filsys other (/dev/sdXX/other)`), reamed by devream()."""

    def __init__(self, name: str, device: BlockDevice, blocks: int) -> None:
        super().__init__(name, device, SUPER_ADDR)
        self.blocks = blocks

    def ream_free_list(self) -> None:
        """superream(): fsize = device size, then free every block from the top down to 4."""
        self.sb = Superb(fsize=self.blocks)
        for a in range(self.blocks - 1, SUPER_ADDR + 1, -1):
            self.addfree(a)


class CwVolume(Volume):
    """The cw device: worm addresses, cached in the cache partition until dumped."""

    cw = True

    def __init__(self, name: str, cache_dev: BlockDevice, worm_dev: BlockDevice,
                 cache: Cache, *, newcache: bool = True) -> None:  # fmt: skip
        super().__init__(name, cache_dev, cache.sbaddr or SUPER_ADDR)
        self.worm = worm_dev
        self.cache = cache
        self.newcache = newcache
        self.buckets: dict[int, Bucket] = {}
        self.where: dict[int, tuple[int, int]] = {}  # waddr -> (bucket, entry)
        self.room_checked_at = -1  # fsize at which the next grow was last found to fit

    # -- the cache map (cw.c getcentry) ---------------------------------------------------------
    def bucket(self, bn: int) -> Bucket:
        b = self.buckets.get(bn)
        if b is None:
            b = self.buckets[bn] = Bucket()
        return b

    def centry(self, waddr: int) -> Centry:
        """getcentry(): the entry caching waddr, else the last Cnone or oldest Cread one."""
        bn = waddr % self.cache.msize
        b = self.bucket(bn)
        hit = self.where.get(waddr)
        if hit is not None and b.entry[hit[1]].state != Cnone:
            c = b.entry[hit[1]]
        else:
            pick, age = -1, 0
            for i, e in enumerate(b.entry):
                if e.state == Cnone:
                    pick, age = i, 0
                elif e.state == Cread and (pick < 0 or e.age < age):
                    pick, age = i, e.age
            if pick < 0:
                raise LayoutError(
                    f"cwfs {self.name}: cache bucket {bn} is full; the cache partition is too "
                    "small for this tree"
                )
            c = b.entry[pick]
            if self.where.get(c.waddr) == (bn, pick):
                del self.where[c.waddr]
            self.where.pop(waddr, None)
            c.state, c.waddr = Cnone, waddr
            self.where[waddr] = (bn, pick)
        c.age = b.agegen
        b.agegen += 1
        if b.agegen >= MAXAGE:
            _resequence(b)
        return c

    def state(self, waddr: int) -> int:
        hit = self.where.get(waddr)
        if hit is None:
            return Cnone
        c = self.buckets[hit[0]].entry[hit[1]]
        return c.state if c.waddr == waddr else Cnone

    def device_offset(self, addr: int) -> int:
        _, entry = self.where[addr]
        return self.cache.slot_addr(addr, entry, self.newcache) * RBUFSIZE

    def block(self, addr: int) -> bytearray:
        """cwio(Oread): memory, else the cache slot, else (no longer cached) the worm."""
        b = self.meta.get(addr)
        if b is None:
            if self.state(addr) == Cnone:
                b = bytearray(self.worm.pread(RBUFSIZE, addr * RBUFSIZE))
            else:
                b = bytearray(self.device.pread(RBUFSIZE, self.device_offset(addr)))
            self.meta[addr] = b
        return b

    def note_write(self, addr: int) -> None:
        c = self.centry(addr)
        if c.state in (Cnone, Cread):
            c.state = Cwrite

    def freeable(self, addr: int) -> bool:
        c = self.centry(addr)
        if c.state in (Cwrite, Cread):
            c.state = Cnone
        return c.state == Cdirty

    def grow(self) -> bool:
        """cw.c cwgrow(): extend the file system by ADDFREE fresh worm blocks."""
        h = self.cache
        fs, ws = h.fsize, h.wsize
        if fs >= ws:
            return False
        nfs = min(fs + ADDFREE, ws)
        h.fsize = nfs
        self.sb.fsize = nfs
        for a in range(nfs - 1, fs - 1, -1):
            c = self.centry(a)
            if c.state == Cnone:
                c.state = Cdirty
                self.addfree(a)
        return True

    def dump(self, addrs: list[int], worm_blocks: dict[int, bytes]) -> None:
        """Odump then dumpblock(): copy Cdirty blocks to the worm; they become Cread."""
        for a in addrs:
            c = self.centry(a)
            c.state = Cdump
        for a in addrs:
            c = self.centry(a)
            block = bytes(self.block(a))
            worm_blocks[a] = block
            self.device.pwrite(block, self.device_offset(a))
            self.changed.discard(a)
            c.state = Cread
            self.cache.wmax = max(self.cache.wmax, a)

    # -- the cache header and map -------------------------------------------------------------
    def finish(self) -> None:
        super().finish()
        h = self.cache
        header = new_block(Tcache, QPSUPER)
        h.pack_into(header)
        self.device.pwrite(bytes(header), CACHE_ADDR * RBUFSIZE)
        nmap = (h.msize + BKPERBLK - 1) // BKPERBLK
        run = bytearray()
        for k in range(nmap):
            block = new_block(Tbuck, h.maddr + k)
            for j in range(BKPERBLK):
                b = self.buckets.get(k * BKPERBLK + j)
                if b is not None:
                    b.pack_into(block, j)
            run += block
            if len(run) >= 64 * RBUFSIZE:
                self.device.pwrite(bytes(run), (h.maddr + k + 1) * RBUFSIZE - len(run))
                run.clear()
        if run:
            self.device.pwrite(bytes(run), (h.maddr + nmap) * RBUFSIZE - len(run))


def _resequence(b: Bucket) -> None:
    """cw.c resequence(): renumber a bucket's ages 0.. in age order."""
    order = sorted(range(CEPERBK), key=lambda i: b.entry[i].age)
    for age, i in enumerate(order):
        b.entry[i].age = age
    b.agegen = CEPERBK
