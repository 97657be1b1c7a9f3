"""Fuzzing the gefs and cwfs readers: `--fs gefs` and `--fs cwfs` images with metadata changed.

gefs: the superblock, arena headers, the allocation log, the snapshot tree, the
dataset tree's leaves (keys, value offsets, directory entries) and pivots, and the
block pointers in them.  gefs hashes every block into the pointer to it, so most
cases reseal what they change: the hash of a changed block is written into every
pointer to it, up to the superblock (its checksum and its backup copy).  A case
then reaches the code that decodes the block instead of stopping at a checksum.
A "pointer" case aims a pointer at another block and gives it that block's hash
(loops, shared blocks, a node where data belongs).

cwfs: the config block, the cache header, the cache buckets (the map from worm
addresses to cache blocks), the superblock, the tags and Dentry fields of directory
blocks (qid, mode, size, direct and indirect block pointers) and an indirect block.

The metadata is found by the separately written readers of tests/gefs_helpers.py and
tests/cwfs_helpers.py and by small parsers here, not by imagebuild's readers.  Each
case runs `inspect`, `inspect --json`, `ls`, `cat` and `fsck` on the fs partition in a
limited child (tests/test_fuzz.py's runner): exit status 0 or 1, on failure exactly
one line on stderr naming the image, no traceback, and the image left as it was.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import cwfs_helpers as cw
from tests.gefs_helpers import metro64
from tests.test_fuzz import (
    INTERESTING,
    KNOWN_LIMIT,
    SECTOR,
    TIME_LIMIT,
    Runner,
    _build,
    apply,
    check_verbs,
    plan9_partition,
    plan9_table,
    raw_head,
)
from tests.test_fuzz import fuzz_root as fuzz_root  # the module-scoped demo root, shared

CASES = 8 * int(os.environ.get("FUZZ_SCALE", "1"))  # seeds per region kind (more: FUZZ_SCALE)
BS = 16384  # both file systems' block size


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    r = Runner(tmp_path_factory.mktemp("fuzz-fs-run"))
    yield r
    r.close()


def _disk(fuzz_root: Path, work: Path, fs: str, mb: int) -> Path:
    """zynq's layout on a small raw disk (cwfs's minimum partitions need more room)."""
    from imagebuild.recipe.load import recipe_path

    recipe = work / f"tiny-{fs}.img.toml"
    recipe.write_text(recipe_path("zynq.img").read_text().replace("mb = 1885", f"mb = {mb}", 1))
    out = work / f"{fs}.img"
    _build([str(recipe), "--fs", fs, "--root", str(fuzz_root), "-o", str(out)])
    return out


@pytest.fixture(scope="module")
def gefs_image(fuzz_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _disk(fuzz_root, tmp_path_factory.mktemp("fuzz-gefs"), "gefs", 300)


@pytest.fixture(scope="module")
def cwfs_image(fuzz_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _disk(fuzz_root, tmp_path_factory.mktemp("fuzz-cwfs"), "cwfs", 1000)


def partition(path: Path, name: str) -> tuple[int, int]:
    """(byte offset, byte length) of a Plan 9 partition."""
    head = raw_head(path, 1 << 20)
    table = plan9_table(head, plan9_partition(head))
    text = head[(plan9_partition(head) + 1) * SECTOR:].split(b"\0", 1)[0].decode()
    for line in text.splitlines():
        w = line.split()
        if w[1] == name:
            return table[name] * SECTOR, (int(w[3]) - int(w[2])) * SECTOR
    raise AssertionError(f"no partition {name}")


# -- the verbs (tests/test_fuzz.py check_verbs says what each must do) -------------------------


FS_VERBS = [["inspect"], ["inspect", "--json"], ["ls", "fs:/rc/bin"], ["ls", "fs:/adm"],
            ["cat", "fs:/rc/bin/big"], ["cat", "fs:/adm/users"], ["fsck"]]


# -- gefs: where the blocks and pointers are ---------------------------------------------------


SB = -1  # the superblock as a container of hashes
SB_ARENAS = 104  # pack.c packsb(): where the (addr, hash) of each arena starts


@dataclass
class GefsMap:
    """The metadata blocks of a gefs partition (partition-relative addresses) by kind, every
    pointer (container block, offset of its address) and, per block, where its hash is kept."""

    base: int  # the partition's byte offset in the image
    size: int
    narena: int
    blocks: dict[str, list[int]] = field(default_factory=dict)
    pointers: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, block, offset)
    hashed_at: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # per node: (offset, width) of its counts, value offsets, key/value lengths and fields
    fields: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    kent: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # name -> (block, Xdir at)

    def add(self, kind: str, addr: int) -> None:
        self.blocks.setdefault(kind, []).append(addr)

    def link(self, kind: str, container: int, at: int, target: int) -> None:
        """A pointer at byte `at` of `container` (address, then hash) to `target`."""
        self.pointers.append((kind, container, at))
        self.hashed_at.setdefault(target, []).append((container, at + 8))


def gefs_map(path: Path) -> GefsMap:
    base, size = partition(path, "fs")
    with path.open("rb") as f:
        def blk(addr: int) -> bytes:
            f.seek(base + addr)
            return f.read(BS)

        sb = blk(0)
        assert sb[:8] == b"gefs9.00"
        narena, snapht = struct.unpack_from(">II", sb, 16)
        (snapaddr,) = struct.unpack_from(">q", sb, 24)
        m = GefsMap(base, size, narena)
        for i in range(narena):
            (addr,) = struct.unpack_from(">q", sb, SB_ARENAS + 16 * i)
            m.add("arena", addr)
            m.hashed_at.setdefault(addr, []).append((SB, SB_ARENAS + 16 * i + 8))
            (loghd,) = struct.unpack_from(">q", blk(addr), 2)
            if loghd != -1 and i < 2:
                m.add("log", loghd)
        m.hashed_at.setdefault(snapaddr, []).append((SB, 32))

        def node(kind: str, addr: int, ht: int, dataset: bool) -> None:
            b = blk(addr)
            m.add(kind, addr)
            btype, nval = struct.unpack_from(">HH", b)
            data = 6 if btype == 2 else 10
            fields = [(0, 2), (2, 2), (4, 2)] + ([(6, 2), (8, 2)] if btype == 1 else [])
            for i in range(nval):
                (o,) = struct.unpack_from(">H", b, data + 2 * i)
                p = data + o
                (nk,) = struct.unpack_from(">H", b, p)
                key = b[p + 2 : p + 2 + nk]
                q = p + 2 + nk
                v = q + 2  # after the value's length
                fields += [(data + 2 * i, 2), (p, 2), (q, 2)]
                if btype == 1:  # a pivot: the child's pointer
                    (child,) = struct.unpack_from(">q", b, v)
                    m.link("child", addr, v, child)
                    node(kind, child, ht - 1, dataset)
                elif dataset and key[0] == 0:  # Kdat: a data block
                    (d,) = struct.unpack_from(">q", b, v)
                    m.link("data", addr, v, d)
                    m.add("data", d)
                elif dataset and key[0] == 1:  # Kent: the name's length, then Xdir
                    m.kent.setdefault(key[11:-1], (addr, v))
                    fields += [(p + 11, 2), (v + 8, 8), (v + 20, 1), (v + 21, 4), (v + 41, 8),
                               (v + 49, 4), (v + 53, 4), (v + 57, 4)]
                elif not dataset and key[0] == 4:  # Ksnap: a dataset's tree
                    (ht2,) = struct.unpack_from(">i", b, v + 8)
                    (root,) = struct.unpack_from(">q", b, v + 48)
                    fields += [(v + 8, 4), (v + 48, 8)]
                    m.link("dataset", addr, v + 48, root)
                    node("tree", root, ht2, True)
            m.fields[addr] = fields

        node("snap", snapaddr, snapht, False)
    return m


def gefs_reseal(image: Path, m: GefsMap, changed: list[int]) -> list[tuple[int, bytes]]:
    """Patches writing the hash of each changed block into every pointer to it, up to the
    superblock's checksum and its backup (parents are found in the unchanged map)."""
    patches: list[tuple[int, bytes]] = []
    with image.open("r+b") as f:
        def read(addr: int, n: int = BS) -> bytes:
            f.seek(m.base + addr)
            return f.read(n)

        def write(addr: int, data: bytes) -> None:
            f.seek(m.base + addr)
            patches.append((m.base + addr, f.read(len(data))))
            f.seek(m.base + addr)
            f.write(data)

        todo = list(changed)
        while todo:
            addr = todo.pop()
            if addr in m.blocks.get("log", []):  # a log block checks its own body
                (logsz,) = struct.unpack_from(">H", read(addr, 4), 2)
                body = read(addr + 36, min(logsz, BS - 36))
                write(addr + 4, struct.pack(">Q", metro64(body)))
            h = struct.pack(">Q", metro64(read(addr)))
            for container, at in m.hashed_at.get(addr, []):
                if container == SB:
                    write(at, h)
                else:
                    write(container + at, h)
                    todo.append(container)
        sb = bytearray(read(0))
        (narena,) = struct.unpack_from(">I", sb, 16)
        end = SB_ARENAS + 16 * min(narena, 1000)
        if end + 8 <= BS:
            sb[end : end + 8] = struct.pack(">Q", metro64(bytes(sb[:end])))
        write(0, bytes(sb))
        write(m.size - m.size % BS - BS, bytes(sb))
    return patches


def gefs_case(image: Path, m: GefsMap, kind: str, rng: random.Random) -> list[tuple[int, bytes]]:
    """Change one block of `kind` (one to three patches) and reseal; returns every patch
    made, original bytes first, so that `restore` undoes them."""
    targets = sorted({a for k in ("arena", "log", "snap", "tree", "data") for a in m.blocks[k]})
    patches: list[tuple[int, bytes]] = []
    if kind == "pointer":
        _, container, at = rng.choice(m.pointers)
        target = rng.choice(targets)
        with image.open("rb") as f:
            f.seek(m.base + target)
            h = metro64(f.read(BS))
        patches.append((m.base + container + at, struct.pack(">qQ", target, h)))
        changed = [container]
    else:
        blocks = {"superblock": [0], "raw": targets}.get(kind) or m.blocks[kind]
        addr = rng.choice(blocks)
        fields = m.fields.get(addr, [])
        if kind == "superblock":
            fields = [(8, 4), (12, 4), (16, 4), (20, 4), (24, 8), (72, 8), (80, 8), (88, 8),
                      (96, 8), *((SB_ARENAS + 16 * i, 8) for i in range(m.narena))]
        elif kind == "arena":
            fields = [(0, 2), (2, 8), (10, 8), (18, 8), (26, 8)]
        elif kind == "log":
            fields = [(0, 2), (2, 2), (12, 8), *((36 + 8 * i, 8) for i in range(16))]
        for _ in range(rng.randint(1, 3)):
            how = rng.choice(["byte", "random", "number", "number"] if fields else ["byte"])
            if how == "byte":
                at, data = rng.randrange(BS if kind != "superblock" else 256), rng.randbytes(1)
            elif how == "random":
                at = rng.randrange(BS - 16)
                data = rng.randbytes(rng.randint(2, 16))
            else:
                at, width = rng.choice(fields)
                value = rng.choice([*INTERESTING, *targets, m.size, m.size - BS])
                data = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
            patches.append((m.base + addr + at, data))
        changed = [] if kind == "raw" else [addr]
    return apply(image, patches).original + gefs_reseal(image, m, changed)


# -- cwfs: where the blocks are -----------------------------------------------------------------


@dataclass
class CwfsMap:
    cache: int  # byte offsets of fscache and fsworm in the image
    worm: int
    config: int  # image offsets of blocks
    header: int
    buckets: int
    superblock: int
    root: int
    dirs: dict[str, int]
    indirect: int
    addrs: list[int]  # worm addresses of metadata, for pointer fields
    subdirs: list[int]  # image offsets of the Dentries of directories in /, /rc and /adm
    dirs_at: list[tuple[int, int]]  # (qid path, first block) of /, /rc, /rc/bin and /adm


def cwfs_map(path: Path) -> CwfsMap:
    cache, _ = partition(path, "fscache")
    worm, _ = partition(path, "fsworm")
    with path.open("rb") as f:
        def cread(off: int, n: int) -> bytes:
            f.seek(cache + off)
            return f.read(n)

        def wread(off: int, n: int) -> bytes:
            f.seek(worm + off)
            return f.read(n)

        img = cw.Image(cread, wread)

        def where(waddr: int) -> int:
            hit = img.slots.get(waddr)
            return cache + hit[0] * BS if hit else worm + waddr * BS

        tree = img.tree()
        dirs = {}
        for p in ("/rc/bin", "/adm"):
            dirs[p] = where(img.blocks_of(tree[p])[0])
        subdirs = []
        for p in ("/", "/rc", "/adm"):
            first = img.blocks_of(tree[p])[0]
            block = img.block(first)
            subdirs += [where(first) + s * DENTRY for s in range(62)
                        if cw.entry(block, s).mode & 0x8000 and cw.entry(block, s).isdir]
        dirs_at = [(tree[p].qpath, img.blocks_of(tree[p])[0])
                   for p in ("/", "/rc", "/rc/bin", "/adm")]
        big = tree["/rc/bin/big"]
        assert big.indirect[0], "the fuzz root's big file needs an indirect block"
        addrs = sorted({img.sbaddr, img.cwraddr, *(img.blocks_of(tree[p])[0] for p in dirs),
                        big.indirect[0]})
        return CwfsMap(cache, worm, cache, cache + 2 * BS, cache + img.maddr * BS,
                       where(img.sbaddr), where(img.cwraddr), dirs, where(big.indirect[0]),
                       addrs, subdirs, dirs_at)


DENTRY = 260
# cwfs Dentry after its name: uid gid mode muid qid.path qid.version size dblock[6] iblocks[4]
DENTRY_FIELDS = [(144, 2), (146, 2), (148, 2), (150, 2), (152, 8), (160, 4), (164, 8),
                 *((172 + 8 * k, 8) for k in range(6)), *((220 + 8 * k, 8) for k in range(4))]
TAG_FIELDS = [(BS - 10, 2), (BS - 8, 8)]  # a block's tag and qid path


def cwfs_region(m: CwfsMap, kind: str, rng: random.Random) -> tuple[int, list[tuple[int, int]]]:
    """(image offset of the block, its fields (offset, width)) for a region kind."""
    if kind == "config":
        return m.config, [(0, 8), *TAG_FIELDS]
    if kind == "cache":
        return m.header, [(8 * i, 8) for i in range(10)] + TAG_FIELDS
    if kind == "bucket":
        return m.buckets, [(4 + 12 * i + at, w) for i in range(8) for at, w in
                           ((0, 2), (2, 2), (4, 8))] + [(0, 4), *TAG_FIELDS]
    if kind == "superblock":
        return m.superblock, [(0, 8), (8, 8), *((16304 + 8 * i, 8) for i in range(8)),
                              *TAG_FIELDS]
    if kind == "root":
        return m.root, [*DENTRY_FIELDS, *TAG_FIELDS]
    if kind == "indirect":
        return m.indirect, [(8 * i, 8) for i in range(32)] + TAG_FIELDS
    where = m.dirs[rng.choice(sorted(m.dirs))]
    slots = range(8)
    if kind == "tag":
        return where, TAG_FIELDS
    if kind == "size":
        return where, [(s * DENTRY + 164, 8) for s in slots]
    if kind == "pointer":
        return where, [(s * DENTRY + at, 8) for s in slots for at in
                       (*(172 + 8 * k for k in range(6)), *(220 + 8 * k for k in range(4)))]
    if kind == "name":
        return where, [(s * DENTRY + at, 1) for s in slots for at in (0, 1, 143)]
    return where, [(s * DENTRY + at, w) for s in slots for at, w in DENTRY_FIELDS]  # dentry


def cwfs_case(image: Path, m: CwfsMap, kind: str, rng: random.Random) -> list[tuple[int, bytes]]:
    if kind == "loop":  # a directory becomes another (an ancestor, itself): qid and first block
        at = rng.choice(m.subdirs)
        qpath, first = rng.choice(m.dirs_at)
        return apply(image, [(at + 152, struct.pack("<q", qpath)),
                             (at + 172, struct.pack("<q", first))]).original
    where, fields = cwfs_region(m, kind, rng)
    values = [*INTERESTING, *m.addrs, 0x7FFF, 0x8000]
    patches = []
    only = {"size": "number", "pointer": "pointer", "tag": "number", "name": "number"}.get(kind)
    for _ in range(rng.randint(1, 3)):
        how = only or rng.choice(["byte", "random", "number", "number", "pointer"])
        if how == "byte":
            patches.append((where + rng.randrange(BS), rng.randbytes(1)))
        elif how == "random":
            patches.append((where + rng.randrange(BS - 16), rng.randbytes(rng.randint(2, 16))))
        else:
            at, width = rng.choice(fields)
            value = rng.choice(values if how == "number" else [*m.addrs, 0, 1, 2, 1 << 40])
            if kind == "name" and how == "number":
                value = rng.choice([0, 0x2F, 0x80, 0xFF, ord("."), 0xC3])
            data = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
            patches.append((where + at, data))
    return apply(image, patches).original


# -- the cases ----------------------------------------------------------------------------------


# (fs, kind, seed) -> the bug, kept as strict xfails until fixed
KNOWN: dict[tuple[str, str, int], str] = {}


def _params(fs: str, kinds: dict[str, int]) -> list[object]:
    out = []
    for kind, count in kinds.items():
        for seed in range(count):
            marks = []
            if (fs, kind, seed) in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[fs, kind, seed]))
            out.append(pytest.param(kind, seed, id=f"{kind}-{seed}", marks=marks))
    return out


def _run(runner: Runner, image: Path, fs: str, kind: str, seed: int,
         patch: object) -> None:
    rng = random.Random(f"{fs}/{kind}/{seed}")
    assert callable(patch)
    original: list[tuple[int, bytes]] = patch(rng)
    limit = KNOWN_LIMIT if (fs, kind, seed) in KNOWN else TIME_LIMIT
    try:
        with image.open("rb") as f:
            changed = []
            for at, data in original:
                f.seek(at)
                changed.append((hex(at), f.read(len(data))[:16].hex()))
        problems = check_verbs(runner, image, FS_VERBS, limit)
    finally:
        with image.open("r+b") as f:
            for at, data in reversed(original):
                f.seek(at)
                f.write(data)
    assert not problems, f"{kind} patched with {changed[:8]}: " + "; ".join(problems)


GEFS_KINDS = {"superblock": CASES, "arena": CASES // 2, "log": CASES // 2, "snap": CASES,
              "tree": 2 * CASES, "pointer": CASES, "raw": CASES // 4}
CWFS_KINDS = {"config": CASES // 2, "cache": CASES, "bucket": CASES, "superblock": CASES // 2,
              "root": CASES // 2, "dentry": CASES, "size": CASES // 2, "pointer": CASES,
              "tag": CASES // 2, "name": CASES // 4, "indirect": CASES // 2, "loop": CASES // 2}


@pytest.mark.parametrize(("kind", "seed"), _params("gefs", GEFS_KINDS))
def test_gefs(runner: Runner, gefs_image: Path, kind: str, seed: int) -> None:
    m = gefs_map(gefs_image)
    _run(runner, gefs_image, "gefs", kind, seed,
         lambda rng: gefs_case(gefs_image, m, kind, rng))


@pytest.mark.parametrize(("kind", "seed"), _params("cwfs", CWFS_KINDS))
def test_cwfs(runner: Runner, cwfs_image: Path, kind: str, seed: int) -> None:
    m = cwfs_map(cwfs_image)
    _run(runner, cwfs_image, "cwfs", kind, seed,
         lambda rng: cwfs_case(cwfs_image, m, kind, rng))


# the restore above must undo every patch: a sanity check that the images survive the tier
def test_restore_leaves_the_images_clean(runner: Runner, gefs_image: Path,
                                         cwfs_image: Path) -> None:
    for image in (gefs_image, cwfs_image):
        code, stderr = runner.run(["fsck", str(image)])
        assert code == 0, stderr



# -- regressions: one per kind of bug the fuzzing found -----------------------------------------


def _gefs_patch(image: Path, m: GefsMap, block: int, at: int,
                data: bytes) -> list[tuple[int, bytes]]:
    """Write `data` at byte `at` of gefs block `block` and reseal; the originals, to restore."""
    return apply(image, [(m.base + block + at, data)]).original + gefs_reseal(image, m, [block])


def _undo(image: Path, original: list[tuple[int, bytes]]) -> None:
    with image.open("r+b") as f:
        for at, data in reversed(original):
            f.seek(at)
            f.write(data)


def test_gefs_fsck_error_names_the_image(runner: Runner, gefs_image: Path) -> None:
    """A reader error under fsck (here a snapshot tree of height 127) named no image."""
    m = gefs_map(gefs_image)
    original = _gefs_patch(gefs_image, m, 0, 20, struct.pack(">I", 127))
    try:
        code, stderr = runner.run(["fsck", str(gefs_image)])
    finally:
        _undo(gefs_image, original)
    assert code == 1 and stderr.count("\n") == 1, stderr
    assert gefs_image.name in stderr and "height 127" in stderr


def test_gefs_fsck_warnings_go_to_stdout(gefs_image: Path) -> None:
    """fsck printed each warning on stderr: several lines for one failure."""
    import subprocess
    import sys

    m = gefs_map(gefs_image)
    arena = m.blocks["arena"][0]
    original = _gefs_patch(gefs_image, m, arena, 26, struct.pack(">q", 3 * BS))  # `used`
    try:
        done = subprocess.run([sys.executable, "-m", "imagebuild", "fsck", str(gefs_image)],
                              capture_output=True, text=True, check=False)
    finally:
        _undo(gefs_image, original)
    assert ": warning: arena at" in done.stdout, done.stdout
    assert len(done.stderr.strip().splitlines()) <= 1, done.stderr


@pytest.mark.parametrize("length", [1 << 62, (1 << 64) - 1])
def test_gefs_huge_length_is_refused(runner: Runner, gefs_image: Path, length: int) -> None:
    """A file length of 2**62 made `cat` gather zeros until memory ran out."""
    m = gefs_map(gefs_image)
    block, at = m.kent[b"big"]
    original = _gefs_patch(gefs_image, m, block, at + 41, struct.pack(">Q", length))
    try:
        problems = check_verbs(runner, gefs_image, FS_VERBS, KNOWN_LIMIT)
        code, stderr = runner.run(["cat", str(gefs_image), "fs:/rc/bin/big"], KNOWN_LIMIT)
    finally:
        _undo(gefs_image, original)
    assert not problems, problems
    assert code == 1 and "more than the partition holds" in stderr, stderr


def test_gefs_messages_with_bad_lengths() -> None:
    """A pivot's buffered wstat with no bytes (IndexError) and relink counts past an int
    (struct.error) must be format errors."""
    from imagebuild.fs.gefs.layout import OREPREV, OWSTAT, Bptr, GefsFormatError, TreeRec, Xdir
    from imagebuild.fs.gefs.reader import apply_msg

    d = Xdir(0, 5, 0, 0, 0o644, 0, 0, 0, 0, 0, 0)
    with pytest.raises(GefsFormatError):
        apply_msg({b"k": d.pack()}, OWSTAT, b"k", b"")
    kvs = {b"s": TreeRec(0x7FFFFFFF, 0x7FFFFFFF, 1, 0, 1, -1, -1, 0, Bptr(0, 0, 0)).pack()}
    apply_msg(kvs, OREPREV, b"s", struct.pack(">qbb", 7, 1, 1))
    t = TreeRec.unpack(kvs[b"s"])
    assert (t.pred, t.nlbl, t.nref) == (7, -(1 << 31), -(1 << 31))


def test_cwfs_directory_loop_ends(runner: Runner, cwfs_image: Path) -> None:
    """/rc made the root again (its qid path and first block): inspect walked forever."""
    m = cwfs_map(cwfs_image)
    root_q, root_block = m.dirs_at[0]
    with cwfs_image.open("rb") as f:
        for at in m.subdirs:
            f.seek(at)
            if f.read(3) == b"rc\0":
                break
    original = apply(cwfs_image, [(at + 152, struct.pack("<q", root_q)),
                                  (at + 172, struct.pack("<q", root_block))]).original
    try:
        problems = check_verbs(runner, cwfs_image, FS_VERBS, KNOWN_LIMIT)
        code, stderr = runner.run(["inspect", "--json", str(cwfs_image)], KNOWN_LIMIT)
    finally:
        _undo(cwfs_image, original)
    assert not problems, problems
    assert code == 0 and not stderr, stderr  # the walk's error is one of inspect's problems


def test_cwfs_fsize_past_the_worm(runner: Runner, cwfs_image: Path) -> None:
    """An fsize of 2**40 (superblock and cache header agreeing): fsck looked up every
    address below it in the cache."""
    m = cwfs_map(cwfs_image)
    big = struct.pack("<q", 1 << 40)
    original = apply(cwfs_image, [(m.superblock + 16304 + 8, big), (m.header + 32, big)]).original
    try:
        code, stderr = runner.run(["fsck", str(cwfs_image)], KNOWN_LIMIT)
    finally:
        _undo(cwfs_image, original)
    assert code == 1 and stderr.count("\n") == 1 and cwfs_image.name in stderr, stderr


@pytest.mark.parametrize("size", [1 << 62, (1 << 63) - 1])
def test_cwfs_huge_size_is_refused(runner: Runner, cwfs_image: Path, size: int) -> None:
    """A Dentry size of 2**62 with the blocks past the first as holes: `cat` streamed zeros
    (and read them all into memory first)."""
    m = cwfs_map(cwfs_image)
    with cwfs_image.open("rb") as f:
        f.seek(m.dirs["/rc/bin"])
        block = f.read(BS)
    slot = next(s for s in range(62) if block[s * DENTRY : s * DENTRY + 4] == b"big\0")
    at = m.dirs["/rc/bin"] + slot * DENTRY + 164
    original = apply(cwfs_image, [(at, struct.pack("<q", size))]).original
    try:
        problems = check_verbs(runner, cwfs_image, FS_VERBS, KNOWN_LIMIT)
        code, stderr = runner.run(["cat", str(cwfs_image), "fs:/rc/bin/big"], KNOWN_LIMIT)
    finally:
        _undo(cwfs_image, original)
    assert not problems, problems
    assert code == 1 and "more than the partition holds" in stderr, stderr


def test_ls_prints_a_name_that_is_not_utf8(cwfs_image: Path, tmp_path: Path) -> None:
    """A name byte 0xFF: `ls` raised UnicodeEncodeError on a strict UTF-8 stdout."""
    import subprocess
    import sys

    m = cwfs_map(cwfs_image)
    with cwfs_image.open("rb") as f:
        f.seek(m.dirs["/rc/bin"])
        block = f.read(BS)
    slot = next(s for s in range(62) if block[s * DENTRY : s * DENTRY + 6] == b"hello\0")
    original = apply(cwfs_image, [(m.dirs["/rc/bin"] + slot * DENTRY, b"\xff")]).original
    try:
        done = subprocess.run([sys.executable, "-m", "imagebuild", "ls", str(cwfs_image),
                               "fs:/rc/bin"], capture_output=True, check=False,
                              env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    finally:
        _undo(cwfs_image, original)
    assert done.returncode == 0, done.stderr
    assert b" \xffello\n" in done.stdout


def test_gefs_empty_key(runner: Runner, gefs_image: Path) -> None:
    """A key of no bytes in the snapshot tree: `k[0]` raised IndexError in inspect and fsck."""
    m = gefs_map(gefs_image)
    snap = m.blocks["snap"][0]
    with gefs_image.open("rb") as f:
        f.seek(m.base + snap)
        block = f.read(BS)
    data = 6 if struct.unpack_from(">H", block)[0] == 2 else 10  # a leaf, else a pivot
    (first,) = struct.unpack_from(">H", block, data)
    p = data + first
    (nk,) = struct.unpack_from(">H", block, p)
    (nv,) = struct.unpack_from(">H", block, p + 2 + nk)
    value = block[p + 4 + nk : p + 4 + nk + nv]
    original = _gefs_patch(gefs_image, m, snap, p, struct.pack(">HH", 0, nv) + value)
    try:
        problems = check_verbs(runner, gefs_image, FS_VERBS, KNOWN_LIMIT)
        code, stderr = runner.run(["ls", str(gefs_image), "fs:/"], KNOWN_LIMIT)
    finally:
        _undo(gefs_image, original)
    assert not problems, problems
    assert code == 1 and "empty key" in stderr, stderr


@pytest.mark.parametrize("fs", ["gefs", "cwfs"])
def test_owner_names_skip_a_huge_users_file(fs: str, gefs_image: Path, cwfs_image: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """/adm/users was read whole for owner names, however long the image said it was; past
    MAX_USERS bytes (here lowered to 16) it is not read, and the listing still works."""
    import importlib

    from imagebuild.readback import listing

    module = importlib.import_module(f"imagebuild.fs.{fs}.reader")
    reads: list[str] = []
    cls = module._Dataset if fs == "gefs" else module.CwfsVolume
    real = cls.read

    def read(self: object, path: str) -> bytes:
        reads.append(path)
        return bytes(real(self, path))

    monkeypatch.setattr(cls, "read", read)
    image = gefs_image if fs == "gefs" else cwfs_image
    names = [row["name"] for row in listing(image, "fs:/")]
    assert reads and reads[0].endswith("/users"), reads
    reads.clear()
    monkeypatch.setattr(module, "MAX_USERS", 16)
    assert [row["name"] for row in listing(image, "fs:/")] == names
    assert not reads, reads
