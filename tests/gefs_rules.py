"""What 9front's gefs does on mount and in `gefs -c`, replayed on an image (bytes).

Written from sys/src/cmd/gefs apart from imagebuild's code, to find what gefs would
abort on, refuse or report:
- load.c loadfs(): both superblocks (pack.c unpacksb(): magic, hash), arena h0/h1;
- ream.c reamfs(): the partition's geometry (narena, arena size and places);
- blk.c loadlog(): the log replay, with grabrange()'s abort on an allocation outside the
  free ranges and freerange()'s asserts on a double free, LogSync cut at qgen;
- check.c checkfree(): ordered, disjoint, non-adjacent ranges;
- check.c checktree(): node layouts, key order and ranges, blkfill, freed blocks in use;
- tree.c setval(): values packed down from the end of the area, valsz exact;
- snap.c opensnap(): labels to snapshots; every Kdat block allocated, hash right;
- fs.c: every directory's Kup, nextqid above every qid, nextgen above every generation.
`check(img)` returns the problems found, each one line; an empty list is a clean image.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from tests.gefs_helpers import metro64

BS = 16384
PIVSPC = BUFSPC = (BS - 10) // 2
LEAFSPC = BS - 6
LOGSPC = BS - 36
NONE = (1 << 64) - 1


@dataclass
class Loaded:
    errors: list[str] = field(default_factory=list)
    free: list[list[list[int]]] = field(default_factory=list)  # per arena, sorted [off, len]
    arenas: list[tuple[int, int]] = field(default_factory=list)  # (h0 address, size)
    used: dict[int, str] = field(default_factory=dict)  # block -> what references it
    logblocks: set[int] = field(default_factory=set)
    labels: dict[str, tuple[int, int]] = field(default_factory=dict)
    snaps: dict[int, tuple[int, ...]] = field(default_factory=dict)
    datasets: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    nextqid: int = 0
    nextgen: int = 0
    qgen: int = 0
    leaked: list[int] = field(default_factory=list)


def _blk(img: bytes, addr: int) -> bytes:
    b = img[addr : addr + BS]
    if len(b) != BS:
        raise AssertionError(f"block {addr:#x} past the end")
    return b


def _grab(fr: list[list[int]], off: int, ln: int) -> bool:
    """blk.c grabrange(): False where gefs abort()s."""
    k = max((i for i, r in enumerate(fr) if r[0] <= off), default=None)
    if k is None or off + ln > fr[k][0] + fr[k][1]:
        return False
    r = fr[k]
    if off == r[0]:
        r[0] += ln
        r[1] -= ln
    elif off + ln == r[0] + r[1]:
        r[1] -= ln
    else:
        fr.insert(k + 1, [off + ln, r[0] + r[1] - off - ln])
        r[1] = off - r[0]
    if r[1] == 0:
        fr.pop(k)
    return True


def _free(fr: list[list[int]], off: int, ln: int) -> bool:
    """blk.c freerange(): False where its asserts fail; merges neighbours."""
    if any(r[0] < off + ln and off < r[0] + r[1] for r in fr):
        return False
    fr.append([off, ln])
    fr.sort()
    merged: list[list[int]] = []
    for r in fr:
        if merged and merged[-1][0] + merged[-1][1] == r[0]:
            merged[-1][1] += r[1]
        else:
            merged.append(list(r))
    fr[:] = merged
    return True


def _load_arenas(img: bytes, ld: Loaded, arenabp: list[tuple[int, int]], asz: int) -> None:
    for i, (ha, hh) in enumerate(arenabp):
        if ha != BS + i * (asz + 2 * BS):
            ld.errors.append(f"arena {i} at {ha:#x}, reamfs() puts it elsewhere")
        h0, h1 = _blk(img, ha), _blk(img, ha + BS)
        if metro64(h0) != hh or h0 != h1:
            ld.errors.append(f"arena {i}: h0 hash or h1 copy wrong")
        ty, loghd, _lh, size, used = struct.unpack_from(">HQQQQ", h0)
        if ty != 5 or size != asz:
            ld.errors.append(f"arena {i}: type {ty} size {size:#x}")
        fr: list[list[int]] = []
        u = size  # loadarena(): used starts at size
        bp, done = loghd, False
        while not done:
            b = _blk(img, bp)
            ld.logblocks.add(bp)
            ty, logsz, logh, chain = struct.unpack_from(">HHQQ", b)
            if ty != 3 or logsz > LOGSPC or metro64(b[36 : 36 + logsz]) != logh:
                ld.errors.append(f"arena {i}: log block {bp:#x} header or hash")
            j = 0
            padded = b + bytes(8)
            while j < logsz:
                ent, ln = struct.unpack_from(">QQ", padded, 36 + j)
                op, off = ent & 0xFF, ent & ~0xFF
                wide = op >= 4
                ln = ln if wide else BS
                j += 16 if wide else 8
                if op == 3:
                    if ent >> 8 >= ld.qgen:  # loadlog(): the tail, cut here
                        done = True
                        break
                elif op in (1, 4):
                    u += ln
                    if not _grab(fr, off, ln):
                        ld.errors.append(f"arena {i}: alloc {off:#x}+{ln:#x} not free: abort()")
                elif op in (2, 5):
                    u -= ln
                    if not _free(fr, off, ln):
                        ld.errors.append(f"arena {i}: free {off:#x}+{ln:#x} overlaps: assert")
                else:
                    ld.errors.append(f"arena {i}: log op {op}: abort()")
                    done = True
                    break
            if chain == NONE:
                done = True
            bp = chain
        for a, c in itertools.pairwise(fr):
            if a[0] + a[1] >= c[0]:
                ld.errors.append(f"arena {i}: overlapping range (checkfree)")
        if any(r[0] < ha + 2 * BS or r[0] + r[1] > ha + asz for r in fr):
            ld.errors.append(f"arena {i}: free range outside the arena")
        if u != used:
            ld.errors.append(f"arena {i}: header used {used} but the log says {u}")
        ld.free.append(fr)
        ld.arenas.append((ha, size))


def _isfree(ld: Loaded, addr: int) -> bool:
    for i, (ha, size) in enumerate(ld.arenas):
        if ha <= addr < ha + size + 2 * BS:
            return any(o <= addr < o + n for o, n in ld.free[i])
    ld.errors.append(f"block {addr:#x} in no arena")
    return False


def _use(ld: Loaded, addr: int, what: str) -> None:
    if _isfree(ld, addr):
        ld.errors.append(f"{what}: freed block in use {addr:#x}")
    ld.used.setdefault(addr, what)


def _node(img: bytes, ld: Loaded, addr: int, h: int, what: str
          ) -> tuple[int, list[tuple[bytes, bytes]], int] | None:
    b = _blk(img, addr)
    if metro64(b) != h:
        ld.errors.append(f"{what}: block {addr:#x} hash mismatch")
    ty = struct.unpack_from(">H", b)[0]
    if ty == 2:
        nval, valsz = struct.unpack_from(">HH", b, 2)
        nbuf = bufsz = 0
        data, spc = 6, LEAFSPC
    elif ty == 1:
        nval, valsz, nbuf, bufsz = struct.unpack_from(">4H", b, 2)
        data, spc = 10, PIVSPC
    else:
        ld.errors.append(f"{what}: block {addr:#x} type {ty}")
        return None
    vals, spans = [], []
    for i in range(nval):
        o = struct.unpack_from(">H", b, data + 2 * i)[0]
        nk = struct.unpack_from(">H", b, data + o)[0]
        nv = struct.unpack_from(">H", b, data + o + 2 + nk)[0]
        k0, v0 = data + o + 2, data + o + 4 + nk
        vals.append((b[k0 : k0 + nk], b[v0 : v0 + nv]))
        spans.append((o, 4 + nk + nv))
    spans.sort()
    if (2 * nval + valsz > spc or sum(n for _, n in spans) != valsz
            or (spans and (spans[0][0] < 2 * nval or spans[-1][0] + spans[-1][1] != spc))
            or any(o1 + n1 > o2 for (o1, n1), (o2, _) in itertools.pairwise(spans))):
        ld.errors.append(f"{what}: block {addr:#x}: values not laid out as setval() does")
    if nbuf:
        ld.errors.append(f"{what}: block {addr:#x}: {nbuf} buffered messages")
    return ty, vals, 2 * nval + valsz + 2 * nbuf + bufsz


def _tree(img: bytes, ld: Loaded, addr: int, h: int, ht: int, gen: int, what: str,
          lo: bytes | None, hi: bytes | None, out: dict[bytes, bytes]) -> int:
    """check.c checktree(); returns blkfill()."""
    _use(ld, addr, what)
    r = _node(img, ld, addr, h, what)
    if r is None:
        return -1
    ty, vals, fill = r
    if (ty == 2) != (ht == 0):
        ld.errors.append(f"{what}: unbalanced tree at {addr:#x}")
    if lo is not None and len(vals) < 2:
        ld.errors.append(f"{what}: underfilled node {addr:#x}")
    keys = [k for k, _ in vals]
    if any(a >= c for a, c in itertools.pairwise(keys)):
        ld.errors.append(f"{what}: misordered or duplicate keys in {addr:#x}")
    if keys and ((lo is not None and keys[0] < lo) or (hi is not None and keys[-1] >= hi)):
        ld.errors.append(f"{what}: out of range keys in {addr:#x}")
    if ty == 2:
        out.update(vals)
        return fill
    for i, (k, v) in enumerate(vals):
        if len(v) != 26:
            ld.errors.append(f"{what}: pivot value of {len(v)} bytes")
            continue
        ca, ch, cg, cf = struct.unpack(">QQQH", v)
        if cg > gen:
            ld.errors.append(f"{what}: child generation {cg} above {gen}")
        nk = vals[i + 1][0] if i + 1 < len(vals) else hi
        if _tree(img, ld, ca, ch, ht - 1, gen, what, k, nk, out) != cf:
            ld.errors.append(f"{what}: mismatched block fill for {ca:#x}")
    return fill


def check(img: bytes) -> Loaded:
    ld = Loaded()
    eb = len(img) - len(img) % BS - BS
    sb = _blk(img, 0)
    if sb[:8] != b"gefs9.00" or _blk(img, eb) != sb:
        ld.errors.append("superblock magic, or the copy at the last block differs")
    blksz, bufspc, narena, snapht, snapaddr, snaphash, dlhd, _dh, dltl, _dt, _flag, \
        ld.nextqid, ld.nextgen, ld.qgen = struct.unpack_from(">4I10Q", sb, 8)
    p = 104
    arenabp = [struct.unpack_from(">QQ", sb, p + 16 * i) for i in range(narena)]
    p += 16 * narena
    if struct.unpack_from(">Q", sb, p)[0] != metro64(sb[:p]):
        ld.errors.append("superblock hash")
    if (blksz, bufspc, dlhd, dltl) != (BS, BUFSPC, NONE, NONE):
        ld.errors.append("superblock blksz, bufspc or snap deadlist")
    sz = len(img) - len(img) % BS - 2 * BS
    na = max(8, min(32, -(-sz // (4096 << 30))))
    asz = sz // na - (sz // na) % BS - 2 * BS
    if narena != na:
        ld.errors.append(f"narena {narena}, reamfs() gives {na}")
    _load_arenas(img, ld, arenabp, asz)

    snap: dict[bytes, bytes] = {}
    _tree(img, ld, snapaddr, snaphash, snapht - 1, 1 << 62, "snap tree", None, None, snap)
    for k, v in snap.items():
        if k[0] == 3:
            ld.labels[k[1:].decode()] = (struct.unpack_from(">Q", v, 1)[0],
                                         struct.unpack_from(">I", v, 9)[0])
        elif k[0] == 4:
            ld.snaps[struct.unpack(">Q", k[1:])[0]] = struct.unpack(">4I4q3Q", v)
        else:
            ld.errors.append(f"snap tree key type {k[0]} (no deadlists expected)")
    for name in ("main", "adm"):
        if name not in ld.labels:
            ld.errors.append(f"no {name} label: loadfs()/fsattach() fail")
    maxqid = 0
    for g, (_nref, nlbl, ht, _fl, gen, _pred, _succ, _base, ba, bh, bg) in ld.snaps.items():
        if gen != g or bg > g or nlbl != sum(1 for x, _ in ld.labels.values() if x == g):
            ld.errors.append(f"snapshot {g}: gen, root gen or nlbl wrong")
        kv: dict[bytes, bytes] = {}
        _tree(img, ld, ba, bh, ht - 1, g, f"snapshot {g}", None, None, kv)
        ld.datasets[g] = kv
        for k, v in kv.items():
            if k[0] == 0:
                a, h, dg = struct.unpack(">QQQ", v)
                _use(ld, a, f"snapshot {g} data")
                if metro64(_blk(img, a)) != h or dg > g or k[9:] != k[9:17] or \
                        struct.unpack(">Q", k[9:17])[0] % BS:
                    ld.errors.append(f"snapshot {g}: data block {a:#x} hash, gen or key")
            elif k[0] == 1:
                nl = struct.unpack_from(">H", k, 9)[0]
                qp, qt = struct.unpack_from(">Q4xB", v, 8)
                maxqid = max(maxqid, qp)
                if len(k) != 12 + nl or k[-1] != 0 or len(v) != 61:
                    ld.errors.append(f"snapshot {g}: Kent {k!r} malformed")
                if qt & 0x80 and kv.get(b"\x02" + struct.pack(">Q", qp)) != k:
                    ld.errors.append(f"snapshot {g}: directory {qp} lacks its Kup")
            elif k[0] not in (2, 6):
                ld.errors.append(f"snapshot {g}: key type {k[0]}")
    if ld.snaps and ld.nextgen <= max(ld.snaps):
        ld.errors.append("nextgen not above every generation")
    if ld.nextqid <= maxqid:
        ld.errors.append("nextqid not above every qid")
    for i, (ha, size) in enumerate(ld.arenas):
        taken = set(range(ha + 2 * BS, ha + size, BS))
        for o, n in ld.free[i]:
            taken -= set(range(o, o + n, BS))
        ld.leaked += sorted(taken - ld.logblocks - set(ld.used))
    return ld
