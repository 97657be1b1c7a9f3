"""cwfs64x on-disk layout: blocks, tags, the superblock, the cache header and map, Dentry.

References (9front, sys/src/cmd/cwfs): portdat.h (every on-disk struct and the
tag numbers), 64xbit.h and cwfs64x/dat.h (the constants of the cwfs64x build:
16K blocks, 64-bit addresses, 144-byte names), iobuf.c settag()/checktag(),
cw.c cacheinit() (the cache geometry), sub.c prime(), wren.c wreninit() (how a
partition's size becomes a block count), config.c sysinit() (the config block).

Every block is RBUFSIZE (16384) bytes: BUFSIZE (16372) bytes of payload, then a
12-byte Tag {short pad; short tag; Off path} naming what the block holds and for
which file (the qid path).  Integers are little-endian, structs packed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from imagebuild.errors import ImageFormatError, LayoutError

# 64xbit.h / cwfs64x/dat.h
RBUFSIZE = 16 * 1024
NAMELEN = 144
NDBLOCK = 6
NIBLOCK = 4
OFF_SIZE = 8  # Off is vlong

# portdat.h
SUPER_ADDR = 2  # superblock of a plain file system
ROOT_ADDR = 3  # root directory of a plain file system
CACHE_ADDR = 2  # cw.c: the Cache header on the cache device
CONFIG_ADDR = 0  # config.c sysinit(): getbuf(confdev, 0)
QPDIR = 0x80000000
QPNONE = 0
QPROOT = 1
QPSUPER = 2

TAG = struct.Struct("<hhq")  # pad, tag, path
BUFSIZE = RBUFSIZE - TAG.size  # 16372
DENTRY = struct.Struct(f"<{NAMELEN}shhHhqIq{NDBLOCK}q{NIBLOCK}qii")
DIRPERBUF = BUFSIZE // DENTRY.size  # 62
INDPERBUF = BUFSIZE // OFF_SIZE  # 2046
SUPER1 = struct.Struct("<8q")  # fstart fsize tfree qidgen cwraddr roraddr last next
FEPERBUF = (BUFSIZE - SUPER1.size - OFF_SIZE) // OFF_SIZE  # 2037
CENTRY = struct.Struct("<Hhq")  # age, state, waddr
BKPERBLK = 10
CEPERBK = (BUFSIZE - BKPERBLK * OFF_SIZE) // (CENTRY.size * BKPERBLK)  # 135
BUCKET_SIZE = 4 + CEPERBK * CENTRY.size  # long agegen + entries
CACHE = struct.Struct("<10qii")  # the Cache header; two Timets (long) at the end
FBUF = struct.Struct(f"<q{FEPERBUF}q")

# Dentry.mode
DALLOC = 0x8000
DDIR = 0x4000
DAPND = 0x2000
DLOCK = 0x1000
DTMP = 0x0800

# tags (portdat.h, the !COMPAT32 order)
Tnone, Tsuper, Tdirold, Tind1old, Tind2old, Tfile, Tfree, Tbuck, Tvirgo, Tcache, Tconfig = range(11)
Tdir, Tind1, Tind2, Tind3, Tind4 = range(11, 16)
Tlabel = 32
TAG_NAMES = {
    Tnone: "none", Tsuper: "super", Tdirold: "dirold", Tind1old: "ind1old", Tind2old: "ind2old",
    Tfile: "file", Tfree: "free", Tbuck: "buck", Tvirgo: "virgo", Tcache: "cache",
    Tconfig: "config", Tdir: "dir", Tind1: "ind1", Tind2: "ind2", Tind3: "ind3", Tind4: "ind4",
    Tlabel: "label",
}  # fmt: skip

# cw.c cache states (recorded in each Centry)
Cnone, Cdirty, Cdump, Cread, Cwrite, Cdump1, Cerror = range(7)
STATE_NAMES = ("none", "dirty", "dump", "read", "write", "dump1", "error")
MAXAGE = 10000  # cw.c: resequence() when a bucket's age generator reaches it
ADDFREE = 100  # cw.c cwgrow(): blocks added to the worm file system at a time

# config.c fspar[]: the compiled-in parameters written into the config block
FSPAR = (
    ("blocksize", RBUFSIZE),
    ("daddrbits", OFF_SIZE * 8),
    ("indirblks", NIBLOCK),
    ("dirblks", NDBLOCK),
    ("namelen", NAMELEN),
)

SECTOR = 512  # wren.c: Sectorsz, the block size wreninit() assumes for partitions


def wren_blocks(length: int) -> int:
    """wren.c wreninit(): `max = (nblock+1)/mult`, the blocks cwfs believes a partition holds.

    nblock counts 512-byte sectors and mult is 32; the +1 rounds a partition
    one sector short of a block boundary up, so its last block would be short.
    """
    return (length // SECTOR + 1) // (RBUFSIZE // SECTOR)


def prime(n: int) -> bool:
    """sub.c prime(), quirks included: even numbers and multiples of 3 (3 too) are not prime."""
    if n % 2 == 0:
        return False
    i = 3
    while True:
        if n % i == 0:
            return False
        if i * i >= n:
            return True
        i += 2


def get_tag(block: bytes | bytearray | memoryview) -> tuple[int, int]:
    """The (tag, path) of a block (iobuf.c checktag())."""
    _, tag, path = TAG.unpack_from(block, BUFSIZE)
    return tag, path


def set_tag(block: bytearray, tag: int, path: int) -> None:
    """iobuf.c settag(); with QPNONE the path already in the block stays."""
    if path == QPNONE:
        path = TAG.unpack_from(block, BUFSIZE)[2]
    TAG.pack_into(block, BUFSIZE, 0, tag, path)


def new_block(tag: int, path: int) -> bytearray:
    """A zeroed block with its tag (what bufalloc() and the ream routines start from)."""
    block = bytearray(RBUFSIZE)
    TAG.pack_into(block, BUFSIZE, 0, tag, path)
    return block


@dataclass
class Dentry:
    """A file or directory (portdat.h struct Dentry, 260 bytes, 62 to a Tdir block)."""

    name: bytes = b""
    uid: int = 0
    gid: int = 0
    mode: int = 0
    muid: int = 0
    path: int = 0  # qid.path, with QPDIR set for directories
    version: int = 0
    size: int = 0
    dblock: list[int] = field(default_factory=lambda: [0] * NDBLOCK)
    iblocks: list[int] = field(default_factory=lambda: [0] * NIBLOCK)
    atime: int = 0
    mtime: int = 0

    @property
    def allocated(self) -> bool:
        return bool(self.mode & DALLOC)

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DDIR)

    @property
    def qpath(self) -> int:
        """The path the tags of this entry's blocks carry (QPDIR cleared)."""
        return self.path ^ QPDIR if self.is_dir else self.path

    def pack(self) -> bytes:
        return DENTRY.pack(
            self.name, self.uid, self.gid, self.mode, self.muid, self.path,
            self.version & 0xFFFFFFFF, self.size, *self.dblock, *self.iblocks,
            self.atime, self.mtime,
        )  # fmt: skip

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> Dentry:
        f = DENTRY.unpack_from(data, offset)
        return cls(
            name=bytes(f[0]).split(b"\0", 1)[0], uid=f[1], gid=f[2], mode=f[3], muid=f[4],
            path=f[5], version=f[6], size=f[7], dblock=list(f[8:14]), iblocks=list(f[14:18]),
            atime=f[18], mtime=f[19],
        )  # fmt: skip


def dentry_at(block: bytes | bytearray | memoryview, slot: int) -> Dentry:
    """dentry.c getdir(): slot `slot % DIRPERBUF` of a directory block."""
    return Dentry.unpack(block, (slot % DIRPERBUF) * DENTRY.size)


def put_dentry(block: bytearray, slot: int, d: Dentry) -> None:
    """Write `d` (DENTRY.size bytes) into slot `slot % DIRPERBUF` of directory buffer `block`.

    In place; as cwfs dentry.c getdir() addresses a slot. Raises nothing.
    """
    off = (slot % DIRPERBUF) * DENTRY.size
    block[off : off + DENTRY.size] = d.pack()


def get_off(block: bytes | bytearray | memoryview, index: int) -> int:
    """Entry `index` of an indirect block (an array of Off)."""
    return int(struct.unpack_from("<q", block, index * OFF_SIZE)[0])


def put_off(block: bytearray, index: int, value: int) -> None:
    """Set entry `index` of indirect block `block` to `value` (a little-endian vlong Off).

    In place; struct.error when `index` falls outside the buffer (cwfs dentry.c indfetch()).
    """
    struct.pack_into("<q", block, index * OFF_SIZE, value)


@dataclass
class Superb:
    """portdat.h struct Superb: the free-list head (Fbuf) followed by Super1."""

    nfree: int = 1
    free: list[int] = field(default_factory=lambda: [0] * FEPERBUF)
    fstart: int = 2
    fsize: int = 0
    tfree: int = 0
    qidgen: int = 10
    cwraddr: int = 0
    roraddr: int = 0
    last: int = 0
    next: int = 0

    def pack_into(self, block: bytearray) -> None:
        FBUF.pack_into(block, 0, self.nfree, *self.free)
        SUPER1.pack_into(
            block, FBUF.size, self.fstart, self.fsize, self.tfree, self.qidgen,
            self.cwraddr, self.roraddr, self.last, self.next,
        )  # fmt: skip

    @classmethod
    def unpack(cls, block: bytes | bytearray | memoryview) -> Superb:
        fb = FBUF.unpack_from(block, 0)
        s = SUPER1.unpack_from(block, FBUF.size)
        return cls(fb[0], list(fb[1:]), *s)


def unpack_fbuf(block: bytes | bytearray | memoryview) -> tuple[int, list[int]]:
    """A Tfree block: the Fbuf (nfree, free[]) it saved from the superblock."""
    fb = FBUF.unpack_from(block, 0)
    return fb[0], list(fb[1:])


@dataclass
class Cache:
    """portdat.h struct Cache: the header in block CACHE_ADDR of a cw device's cache."""

    maddr: int = 0  # first bucket (map) block
    msize: int = 0  # number of buckets
    caddr: int = 0  # first cached block
    csize: int = 0  # cached blocks
    fsize: int = 0  # worm blocks in use (the high-water mark of allocation)
    wsize: int = 0  # worm size in blocks
    wmax: int = 0  # highest worm block written
    sbaddr: int = 0  # current superblock
    cwraddr: int = 0  # root of the cache file system
    roraddr: int = 0  # root of the dump file system
    toytime: int = 0
    time: int = 0

    def pack_into(self, block: bytearray) -> None:
        CACHE.pack_into(
            block, 0, self.maddr, self.msize, self.caddr, self.csize, self.fsize, self.wsize,
            self.wmax, self.sbaddr, self.cwraddr, self.roraddr, self.toytime, self.time,
        )  # fmt: skip

    @classmethod
    def unpack(cls, block: bytes | bytearray | memoryview) -> Cache:
        return cls(*CACHE.unpack_from(block, 0))

    def slot_addr(self, waddr: int, entry: int, newcache: bool) -> int:
        """cw.c cwio(): the cache block holding entry `entry` of waddr's bucket."""
        bn = waddr % self.msize
        if newcache:  # -C: entry-major, so consecutive worm blocks sit side by side
            return self.caddr + bn + entry * self.msize
        return self.caddr + bn * CEPERBK + entry


def cache_geometry(cache_blocks: int) -> Cache:
    """cw.c cacheinit(): size the bucket map and the cache area for a cache of this many blocks.

    Raises LayoutError where cwfs would panic ("cache too small").
    """
    c = Cache(maddr=CACHE_ADDR + 1)
    m = cache_blocks - c.maddr
    per = CEPERBK * BKPERBLK
    csize = ((m - 1) * per) // (per + 1)
    msize = csize // CEPERBK - 5
    if msize <= 0:
        raise LayoutError(f"cwfs cache of {cache_blocks} blocks is too small (cacheinit)")
    while not prime(msize):
        msize -= 1
    c.msize = msize
    c.csize = msize * CEPERBK
    c.caddr = c.maddr + (msize + BKPERBLK - 1) // BKPERBLK
    if c.caddr + c.csize > m:
        raise LayoutError(f"cwfs cache of {cache_blocks} blocks: cache size error (cacheinit)")
    return c


@dataclass
class Centry:
    """portdat.h struct Centry: one cached worm block's age, state and worm address."""

    age: int = 0
    state: int = Cnone
    waddr: int = 0


@dataclass
class Bucket:
    """portdat.h struct Bucket: CEPERBK entries and the generator of their ages."""

    agegen: int = 0
    entry: list[Centry] = field(default_factory=lambda: [Centry() for _ in range(CEPERBK)])

    def pack_into(self, block: bytearray, index: int) -> None:
        off = index * BUCKET_SIZE
        struct.pack_into("<i", block, off, self.agegen)
        for i, c in enumerate(self.entry):
            CENTRY.pack_into(block, off + 4 + i * CENTRY.size, c.age, c.state, c.waddr)

    @classmethod
    def unpack(cls, block: bytes | bytearray | memoryview, index: int) -> Bucket:
        off = index * BUCKET_SIZE
        agegen = struct.unpack_from("<i", block, off)[0]
        return cls(
            agegen,
            [Centry(*CENTRY.unpack_from(block, off + 4 + i * CENTRY.size)) for i in range(CEPERBK)],
        )


# -- the config block (config.c) ----------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What the config block says: the service, the file systems and the flags."""

    service: str
    filsys: tuple[tuple[str, str], ...]
    noauth: bool = True
    newcache: bool = True
    params: tuple[tuple[str, int], ...] = FSPAR

    def text(self) -> bytes:
        """config.c sysinit() under f.modconf: the lines in the order it prints them."""
        lines = [f"service {self.service}"] if self.service else []
        lines += [f"filsys {name} {conf}" for name, conf in self.filsys if conf]
        if self.noauth:
            lines.append("noauth")
        if self.newcache:
            lines.append("newcache")
        lines += [f"{name} {value}" for name, value in self.params]
        return "".join(line + "\n" for line in lines).encode()

    def block(self) -> bytearray:
        text = self.text()
        if len(text) >= BUFSIZE:
            raise LayoutError("cwfs config block text is longer than a block")
        block = new_block(Tconfig, 0)
        block[: len(text)] = text
        return block

    def filsys_conf(self, name: str) -> str | None:
        for n, conf in self.filsys:
            if n == name:
                return conf
        return None

    @classmethod
    def parse(cls, block: bytes | bytearray | memoryview) -> Config:
        """config.c mergeconf(), strict: an unknown keyword is an error (cwfs panics too)."""
        tag, _ = get_tag(block)
        if tag != Tconfig:
            raise ImageFormatError(f"cwfs config block has tag {tag}, expected {Tconfig} (config)")
        raw = bytes(block[:BUFSIZE]).split(b"\0", 1)[0]
        service, filsys, noauth, newcache, params = "", [], False, False, []
        for line in raw.decode("utf-8", "replace").splitlines():
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            key = words[0]
            if key == "service" and len(words) > 1:
                service = service or words[1]
            elif key == "filsys" and len(words) > 1:
                filsys.append((words[1], words[2] if len(words) > 2 else ""))
            elif key == "noauth":
                noauth = True
            elif key == "newcache":
                newcache = True
            elif key in dict(FSPAR) and len(words) > 1 and words[1].isdigit():
                params.append((key, int(words[1])))
            elif key in ("nonone", "noatime", "readonly"):
                continue
            else:
                raise ImageFormatError(f"cwfs config block: unknown keyword {key!r}")
        return cls(service, tuple(filsys), noauth, newcache, tuple(params))


def installer_config(disk: str, *, other: bool = True) -> Config:
    """The config `cwfs64x -C -c` writes from rc/bin/inst/mountcwfs's /tmp/fsconfig.

    `disk` is the sd(3) name the booted machine gives the disk (sdC0, sdF0, ...).
    """
    dev = f"/dev/{disk}"
    filsys = [("main", f"c({dev}/fscache)({dev}/fsworm)"), ("dump", "o")]
    if other:
        filsys.append(("other", f"({dev}/other)"))
    return Config("cwfs", tuple(filsys))
