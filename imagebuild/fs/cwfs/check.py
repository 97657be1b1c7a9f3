"""fsck for cwfs: what `check` on the cwfs console verifies, plus the cache and worm around it.

chk.c cmd_check() walks a file system from its root: every block a Dentry or
an indirect block names must lie in [fstart, fsize) and be named once
(amark: "address dup", "range"), every directory block must be tagged Tdir
with its directory's qid path, every data block Tfile and every indirect block
Tind1..Tind4 with its file's (xtag), every qid path must be unique (qmark: "qid
dup") and at most the superblock's qidgen ("qid generator low"); then
ckfreelist() walks the free list through its Tfree blocks (fmark: a free block
that is also in use is "address dup").  For the main (cw) file system the
superblock, the dump root and the reserved next superblock count as used.

Around that we check what cwfs reads before it serves: the config block
(config.c), the cache header and every bucket block (cw.c cwinit(): "checktag
c bucket"), the bucket entries (a worm address in its own bucket, once, with a
known state and an age below the bucket's generator, getcentry()), the worm's
copy of the superblock (cw.c touchsb()), and that every Cread slot still equals
its worm block.  We also count blocks below fsize that are neither in use nor
free ("missing", which chk.c reports for plain devices), and check one thing
cwfs's check does not: that the next dump will reach every block changed
since the last one (`dump_reach`).
"""

from __future__ import annotations

from collections.abc import Iterator

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import ImageFormatError
from imagebuild.fs.cwfs.layout import (
    BKPERBLK,
    CEPERBK,
    DALLOC,
    DIRPERBUF,
    DTMP,
    FEPERBUF,
    FSPAR,
    INDPERBUF,
    NAMELEN,
    NDBLOCK,
    NIBLOCK,
    QPDIR,
    QPROOT,
    QPSUPER,
    RBUFSIZE,
    TAG_NAMES,
    Cdirty,
    Cdump1,
    Cnone,
    Cread,
    Cwrite,
    Dentry,
    Superb,
    Tbuck,
    Tdir,
    Tfile,
    Tfree,
    Tind1,
    Tind4,
    Tsuper,
    cache_geometry,
    dentry_at,
    get_off,
    get_tag,
    unpack_fbuf,
    wren_blocks,
)
from imagebuild.fs.cwfs.reader import BlockSource, CwBlocks, CwfsError, CwfsVolume

MAX_PROBLEMS = 50


class _Checker:
    """One chk.c pass over one file system."""

    def __init__(self, name: str, blocks: BlockSource, sb: Superb, cw: bool) -> None:
        self.name = name
        self.blocks = blocks
        self.sb = sb
        self.cw = cw
        self.fstart = 2
        self.fsize = sb.fsize
        self.used: set[int] = set()
        self.free: set[int] = set()
        self.qids: set[int] = set()
        self.maxq = 0
        self.problems: list[str] = []
        self.files = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{self.name}: {text}")

    def amark(self, a: int, where: str) -> bool:
        """Mark a block in use; False (and a problem) when out of range or already used."""
        if a == 0:
            return False
        if a < self.fstart or a >= self.fsize:
            self.problem(f"{where}: block {a} out of range [{self.fstart}, {self.fsize})")
            return False
        if a in self.used:
            self.problem(f"{where}: address dup {a}")
            return False
        self.used.add(a)
        return True

    def xtag(self, a: int, tag: int, qpath: int, where: str) -> bytes | None:
        try:
            block = self.blocks.read(a)
        except (CwfsError, ImageFormatError) as e:
            self.problem(f"{where}: {e}")
            return None
        t, p = get_tag(block)
        if t != tag or p != qpath:
            self.problem(
                f"{where}: block {a} tagged {TAG_NAMES.get(t, t)}/{p}, expected "
                f"{TAG_NAMES.get(tag, tag)}/{qpath}"
            )
            return None
        return block

    def run(self, root_addr: int) -> None:
        self.amark(self.blocks.sbaddr, "superblock")
        if self.cw:
            self.amark(self.sb.roraddr, "dump root")
            self.amark(self.sb.next, "next superblock")
            self.xtag(self.sb.roraddr, Tdir, QPROOT, "dump root")
        block = self.xtag(root_addr, Tdir, QPROOT, "root")
        if block is not None:
            self.amark(root_addr, "root")
            self.fsck(dentry_at(block, 0), "")
        if self.sb.qidgen < self.maxq:
            self.problem(f"qid generator low path={self.sb.qidgen} maxq={self.maxq}")
        self.ckfreelist()

    def fsck(self, d: Dentry, prefix: str) -> None:
        if not d.allocated:
            return
        self.files += 1
        if len(d.name) >= NAMELEN:
            self.problem(f"{prefix}: name not terminated")
            return
        path = prefix + "/" + d.name.decode("utf-8", "replace") if prefix or d.name != b"/" else "/"
        if d.is_dir != bool(d.path & QPDIR):
            self.problem(f"{path}: DDIR and QPDIR disagree (mode {d.mode:#x}, qid {d.path:#x})")
        qpath = d.qpath
        if qpath in self.qids:
            self.problem(f"{path}: qid dup {qpath:#x}")
        self.qids.add(qpath)
        self.maxq = max(self.maxq, qpath)
        for a in d.dblock[:NDBLOCK]:
            if self.amark(a, path):
                self.dirck(d, a, path)
        for i in range(NIBLOCK):
            a = d.iblocks[i]
            if self.amark(a, path):
                self.indirck(d, a, Tind1 + i, path)
        if not d.is_dir and d.size < 0:
            self.problem(f"{path}: negative size {d.size}")

    def dirck(self, d: Dentry, a: int, path: str) -> None:
        if not d.is_dir:
            self.xtag(a, Tfile, d.qpath, path)
            return
        block = self.xtag(a, Tdir, d.qpath, path)
        if block is None:
            return
        for slot in range(DIRPERBUF):
            self.fsck(dentry_at(block, slot), "" if path == "/" else path)

    def indirck(self, d: Dentry, a: int, tag: int, path: str) -> None:
        block = self.xtag(a, tag, d.qpath, path)
        if block is None:
            return
        for k in range(INDPERBUF):
            child = get_off(block, k)
            if self.amark(child, path):
                if tag == Tind1:
                    self.dirck(d, child, path)
                else:
                    self.indirck(d, child, tag - 1, path)

    def ckfreelist(self) -> None:
        nfree, free = self.sb.nfree, self.sb.free
        count = 0
        seen_chain: set[int] = set()
        while True:
            if nfree < 0 or nfree > FEPERBUF:
                self.problem(f"free list: nfree bad {nfree}")
                break
            for a in free[1:nfree]:
                if a:
                    count += self.fmark(a)
            a = free[0]
            if not a:
                break
            if not self.fmark(a) or a in seen_chain:
                break
            count += 1
            seen_chain.add(a)
            block = self.xtag(a, Tfree, 0, "free list")
            if block is None:
                break
            nfree, free = unpack_fbuf(block)
        if count != self.sb.tfree:
            self.problem(f"free list holds {count} blocks, superblock tfree says {self.sb.tfree}")

    def fmark(self, a: int) -> int:
        if a < self.fstart or a >= self.fsize:
            self.problem(f"free list: block {a} out of range")
            return 0
        if a in self.used or a in self.free:
            self.problem(f"free list: address dup {a}")
            return 0
        self.free.add(a)
        return 1

    def missing(self, candidates: Iterator[int]) -> None:
        lost = [a for a in candidates if a not in self.used and a not in self.free]
        if lost:
            self.problem(f"{len(lost)} blocks neither in use nor free (missing), e.g. {lost[:5]}")


def dump_reach(blocks: CwBlocks, root: int) -> list[str]:
    """Blocks changed since the last dump that the next dump would not reach.

    cw.c cwrecur() starts at the root and descends only into dirty blocks (isdirty():
    Cdirty or Cwrite, or an indirect block in the cache at all), skipping DTMP files.  A
    changed block (Cdirty, Cwrite) below a clean one would stay out of the next dump and the
    tree would keep the block's old worm copy.  A real cwfs keeps the way dirty through the
    atime every walk sets (9p2.c walkname()); this pass checks that it is.
    """
    problems: list[str] = []
    stack: list[tuple[int, int, int, int, bool, str]] = [(root, Tdir, 0, QPROOT, True, "/")]
    lost = 0
    seen: set[int] = set()  # a block met again (a loop, a shared block) is not walked again
    while stack:
        addr, tag, tag1, qp, reach, path = stack.pop()
        if addr in seen:
            continue
        seen.add(addr)
        hit = blocks.slot(addr)
        state = Cnone if hit is None else hit[1]
        changed = state in (Cdirty, Cwrite)
        if changed and not reach:
            lost += 1
            if len(problems) < 5:
                problems.append(f"main: {path}: block {addr} changed since the last dump is out "
                                "of the next dump's reach (its parent block is clean)")  # fmt: skip
        reach = reach and (changed or (Tind1 <= tag <= Tind4 and state != Cnone))
        if tag == Tfile:
            continue
        try:
            block = blocks.read(addr)
        except (CwfsError, ImageFormatError):
            continue  # the tree walk reports it
        if get_tag(block) != (tag, qp):
            continue
        if tag == Tdir:
            for slot in range(DIRPERBUF):
                d = dentry_at(block, slot)
                if d.mode & (DALLOC | DTMP) != DALLOC:
                    continue
                t1 = Tdir if d.is_dir else Tfile
                name = d.name.decode("utf-8", "replace")
                sub = name if addr == root else path.rstrip("/") + "/" + name
                for a in d.dblock[:NDBLOCK]:
                    if a:
                        stack.append((a, t1, 0, d.qpath, reach, sub))
                for j in range(NIBLOCK):
                    if d.iblocks[j]:
                        stack.append((d.iblocks[j], Tind1 + j, t1, d.qpath, reach, sub))
        else:
            child, ctag1 = (tag1, 0) if tag == Tind1 else (tag - 1, tag1)
            for k in range(INDPERBUF):
                a = get_off(block, k)
                if a:
                    stack.append((a, child, ctag1, qp, reach, path))
    if lost > len(problems):
        problems.append(f"main: {lost} blocks changed since the last dump are out of its reach")
    return problems


def _check_cache(vol: CwfsVolume, cache_dev: BlockDevice, worm_dev: BlockDevice) -> list[str]:
    """The cache header's geometry, the bucket blocks and entries, Cread copies, the worm sb."""
    problems: list[str] = []
    cw: CwBlocks = vol.main
    h = cw.cache
    want = cache_geometry(wren_blocks(cache_dev.size))
    got = (h.maddr, h.msize, h.caddr, h.csize)
    if got != (want.maddr, want.msize, want.caddr, want.csize):
        problems.append(f"cache header geometry {got} differs from cacheinit()'s "
                        f"{(want.maddr, want.msize, want.caddr, want.csize)}")  # fmt: skip
    if h.wsize != wren_blocks(worm_dev.size):
        problems.append(f"cache header wsize {h.wsize}, fsworm holds {wren_blocks(worm_dev.size)}")
    if not h.fsize <= h.wsize:
        problems.append(f"cache header fsize {h.fsize} beyond wsize {h.wsize}")
    owner: dict[int, int] = {}
    for k in range((h.msize + BKPERBLK - 1) // BKPERBLK):
        addr = h.maddr + k
        raw = cache_dev.pread(RBUFSIZE, addr * RBUFSIZE)
        if get_tag(raw) != (Tbuck, addr):
            problems.append(f"bucket block {addr} tagged {get_tag(raw)}, expected {(Tbuck, addr)}")
            continue
        for j in range(BKPERBLK):
            bn = k * BKPERBLK + j
            if bn >= h.msize:
                break
            b = cw.bucket(bn)
            ages: set[int] = set()
            for i, c in enumerate(b.entry[:CEPERBK]):
                if c.state == Cnone:
                    continue
                if c.state > Cdump1 or c.state < 0:
                    problems.append(f"bucket {bn} entry {i}: bad state {c.state}")
                if c.waddr % h.msize != bn:
                    problems.append(f"bucket {bn} entry {i}: worm block {c.waddr} misplaced")
                if c.waddr in owner:
                    problems.append(f"worm block {c.waddr} cached twice")
                owner[c.waddr] = c.state
                if c.age >= b.agegen or c.age in ages:
                    problems.append(f"bucket {bn} entry {i}: age {c.age} (generator {b.agegen})")
                ages.add(c.age)
                if c.state in (Cdirty, Cwrite) and c.waddr >= h.fsize:
                    problems.append(f"worm block {c.waddr} is {c.state} beyond fsize {h.fsize}")
                if c.state == Cread:
                    slot = h.slot_addr(c.waddr, i, cw.newcache)
                    if cache_dev.pread(RBUFSIZE, slot * RBUFSIZE) != worm_dev.pread(
                        RBUFSIZE, c.waddr * RBUFSIZE
                    ):
                        problems.append(f"worm block {c.waddr}: Cread cache copy differs")
    if h.wmax >= h.wsize:
        problems.append(f"cache header wmax {h.wmax} beyond wsize {h.wsize}")
    worm_sb = worm_dev.pread(RBUFSIZE, h.sbaddr * RBUFSIZE)
    if get_tag(worm_sb) != (Tsuper, QPSUPER):
        problems.append(f"worm superblock {h.sbaddr} unreadable (touchsb): tag {get_tag(worm_sb)}")
    return [f"main: {p}" for p in problems]


def _dirty_blocks(cw: CwBlocks, lo: int, hi: int) -> Iterator[int]:
    """The worm addresses in [lo, hi) whose cache entry (the one slot() finds) is Cdirty, in
    order: a pass over the buckets, not over [lo, hi), whose end is read from the image."""
    found = []
    for bn in range(cw.cache.msize):
        first: dict[int, int] = {}  # slot() takes a bucket's first live entry for an address
        for c in cw.bucket(bn).entry[:CEPERBK]:
            if c.state != Cnone and c.waddr % cw.cache.msize == bn:
                first.setdefault(c.waddr, c.state)
        found += [a for a, state in first.items() if state == Cdirty and lo <= a < hi]
    return iter(sorted(found))


def fsck(fscache: BlockDevice, fsworm: BlockDevice, other: BlockDevice | None = None) -> list[str]:
    """Check main (and other, when its partition is given); the problems found, [] when clean."""
    try:
        vol = CwfsVolume(fscache, fsworm, other)
    except (CwfsError, ImageFormatError) as e:
        return [str(e)]
    problems: list[str] = []
    params = dict(vol.config.params)
    for name, value in FSPAR:
        if params.get(name, value) != value:
            problems.append(f"config: {name} {params[name]}, cwfs64x is built with {value}")
    if vol.config.filsys_conf("main") is None:
        problems.append("config: no filsys main")
    problems += _check_cache(vol, fscache, fsworm)
    h = vol.main.cache
    try:
        sb = vol.superblock()
    except CwfsError as e:
        return [*problems, f"main: {e}"]
    if sb.fsize != h.fsize or sb.cwraddr != h.cwraddr or sb.roraddr != h.roraddr:
        problems.append(f"main: superblock fsize/cwraddr/roraddr {sb.fsize}/{sb.cwraddr}/"
                        f"{sb.roraddr} disagree with the cache header {h.fsize}/{h.cwraddr}/"
                        f"{h.roraddr}")  # fmt: skip
    main = _Checker("main", vol.main, sb, cw=True)
    main.run(h.cwraddr)
    # fresh blocks (Cdirty) must be in the tree or on the free list; a rewritten block a
    # dump moved elsewhere (Cwrite, like the previous superblock) may be neither
    dirty = _dirty_blocks(vol.main, main.fstart, main.fsize)
    main.missing(dirty)
    problems += main.problems
    problems += dump_reach(vol.main, h.cwraddr)
    if other is not None and vol.other is not None:
        try:
            raw = vol.other.read(2)
        except CwfsError as e:
            return [*problems, f"other: {e}"]
        if get_tag(raw) != (Tsuper, QPSUPER):
            return [*problems, f"other: superblock tagged {get_tag(raw)}"]
        osb = Superb.unpack(raw)
        oc = _Checker("other", vol.other, osb, cw=False)
        oc.run(3)
        oc.missing(iter(range(oc.fstart, min(oc.fsize, other.size // RBUFSIZE))))
        problems += oc.problems
    return problems
