"""An independent reading of hjfs blocks for tests, written from dat.h and conv.c alone.

Nothing here imports imagebuild's hjfs modules: byte offsets come from the
field order in conv.c's pack() (all little-endian):

    block:      type (1 byte), payload (4095)
    superblock: magic u32 @1, size u64 @5, fstart @13, fend @21, root @29, qidpath @37
    refs:       1365 counts of 3 bytes @1
    dentry:     9 entries of 453 bytes @1; in each: name[256] @0, uid s16 @256,
                muid @258, gid @260, mode u16 @262, path u64 @264, vers u32 @272,
                type u8 @276, size u64 @277, db[15] @285, ib[4] @405, atime @437, mtime @445
    indir:      341 offsets u64 @1
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

BLOCK = 4096
PAYLOAD = 4095
ENTRY = 453
ENTRIES_PER_BLOCK = PAYLOAD // ENTRY  # 9
OFFSETS_PER_BLOCK = PAYLOAD // 12  # 341 (dat.h sizes an offset as 12 bytes)
COUNTS_PER_BLOCK = PAYLOAD // 3  # 1365
ALLOC = 0x8000
GONE = 0x4000
QTDIR = 0x80


@dataclass
class Entry:
    name: bytes
    uid: int
    muid: int
    gid: int
    mode: int
    path: int
    vers: int
    type: int
    size: int
    db: list[int]
    ib: list[int]
    atime: int
    mtime: int


def block(image: bytes, n: int) -> bytes:
    return image[n * BLOCK : (n + 1) * BLOCK]


def superblock(image: bytes) -> dict[str, int]:
    b = block(image, 0)
    assert b[0] == 1, "block 0 is not a superblock"
    magic, size, fstart, fend, root, qidpath = struct.unpack_from("<IQQQQQ", b, 1)
    return {
        "magic": magic,
        "size": size,
        "fstart": fstart,
        "fend": fend,
        "root": root,
        "qidpath": qidpath,
    }


def entry(b: bytes, i: int) -> Entry:
    o = 1 + i * ENTRY
    name = b[o : o + 256].split(b"\0", 1)[0]
    uid, muid, gid = struct.unpack_from("<hhh", b, o + 256)
    (mode,) = struct.unpack_from("<H", b, o + 262)
    (path,) = struct.unpack_from("<Q", b, o + 264)
    (vers,) = struct.unpack_from("<I", b, o + 272)
    qtype = b[o + 276]
    (size,) = struct.unpack_from("<Q", b, o + 277)
    db = list(struct.unpack_from("<15Q", b, o + 285))
    ib = list(struct.unpack_from("<4Q", b, o + 405))
    atime, mtime = struct.unpack_from("<qq", b, o + 437)
    return Entry(name, uid, muid, gid, mode, path, vers, qtype, size, db, ib, atime, mtime)


def entries(b: bytes) -> list[Entry]:
    assert b[0] == 2, f"not a dentry block (type {b[0]})"
    return [entry(b, i) for i in range(ENTRIES_PER_BLOCK)]


def offsets(b: bytes) -> list[int]:
    assert b[0] == 3, f"not an indirect block (type {b[0]})"
    return list(struct.unpack_from(f"<{OFFSETS_PER_BLOCK}Q", b, 1))


def stored_counts(image: bytes) -> list[int]:
    sb = superblock(image)
    counts = []
    for n in range(sb["fstart"], sb["fend"]):
        b = block(image, n)
        assert b[0] == 4, f"block {n} is not a reference block"
        counts += [
            int.from_bytes(b[1 + 3 * i : 4 + 3 * i], "little") for i in range(COUNTS_PER_BLOCK)
        ]
    return counts


def file_blocks(image: bytes, e: Entry) -> dict[int, int]:
    """File block index -> device block, following direct and indirect pointers."""
    found: dict[int, int] = {i: b for i, b in enumerate(e.db) if b}
    base = 15
    span = 1
    for level, top in enumerate(e.ib):
        span *= OFFSETS_PER_BLOCK
        if top:
            _collect(image, top, level, base, span // OFFSETS_PER_BLOCK, found)
        base += span
    return found


def _collect(image: bytes, n: int, depth: int, base: int, step: int, found: dict[int, int]) -> None:
    for k, off in enumerate(offsets(block(image, n))):
        if not off:
            continue
        if depth == 0:
            found[base + k] = off
        else:
            _collect(image, off, depth - 1, base + k * step, step // OFFSETS_PER_BLOCK, found)


def indirect_blocks(image: bytes, e: Entry) -> list[int]:
    """Every indirect block below an entry."""
    out = []

    def walk(n: int, depth: int) -> None:
        out.append(n)
        if depth:
            for off in offsets(block(image, n)):
                if off:
                    walk(off, depth - 1)

    for level, top in enumerate(e.ib):
        if top:
            walk(top, level)
    return out


def recount(image: bytes) -> Counter[int]:
    """Reference counts recomputed from the pointers: 1 per pointer slot in a distinct block,
    1 for the superblock and each reference block, 1 for the root block."""
    sb = superblock(image)
    want: Counter[int] = Counter(range(sb["fend"]))
    want[sb["root"]] += 1
    seen: set[int] = set()

    def dentry_block(n: int) -> None:
        if n in seen:
            return
        seen.add(n)
        for e in entries(block(image, n)):
            if e.mode & ALLOC:
                visit(e)

    def visit(e: Entry) -> None:
        for p in e.db + e.ib:
            if p:
                want[p] += 1
        for n in indirect_blocks(image, e):
            if n in seen:
                continue
            seen.add(n)
            for off in offsets(block(image, n)):
                if off:
                    want[off] += 1
        if e.type & QTDIR:
            for n in file_blocks(image, e).values():
                dentry_block(n)

    root = entries(block(image, sb["root"]))
    seen.add(sb["root"])
    visit(root[0])
    visit(root[1])
    return want


def walk_tree(image: bytes) -> dict[str, Entry]:
    """Every entry by path (the root as "/")."""
    sb = superblock(image)
    root = entries(block(image, sb["root"]))[0]
    out = {"/": root}

    def visit(e: Entry, path: str) -> None:
        for _, n in sorted(file_blocks(image, e).items()):
            for child in entries(block(image, n)):
                if child.mode & ALLOC:
                    full = path.rstrip("/") + "/" + child.name.decode()
                    out[full] = child
                    if child.type & QTDIR:
                        visit(child, full)

    visit(root, "/")
    return out


def read_file(image: bytes, e: Entry) -> bytes:
    found = file_blocks(image, e)
    nblocks = (e.size + PAYLOAD - 1) // PAYLOAD
    data = bytearray()
    for i in range(nblocks):
        data += block(image, found[i])[1:] if i in found else bytes(PAYLOAD)
    return bytes(data[: e.size])


def mkfs_touched_blocks(content: bytes, chunk: int = 4088) -> tuple[list[int], int]:
    """mkfs -z 4096 over hjfs: 4088-byte writes, zero pieces skipped, last zero byte written.

    Returns the 4095-byte file blocks written and the number of writes.
    """
    touched: set[int] = set()
    writes = 0
    last_was_hole = False
    for start in range(0, len(content), chunk):
        piece = content[start : start + chunk]
        last_was_hole = not any(piece)
        if last_was_hole:
            continue
        writes += 1
        touched.update(range(start // PAYLOAD, (start + len(piece) - 1) // PAYLOAD + 1))
    if last_was_hole:
        writes += 1
        touched.add((len(content) - 1) // PAYLOAD)
    return sorted(touched), writes
