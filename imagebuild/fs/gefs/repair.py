"""Rewrite the adm root backlink that gefs reams before July 2024 stored under the wrong key.

ream.c's initadm() packed the adm root's Kup backlink with packsuper(0)
until 9front commit 108f94b25 made it packsuper(Qadmroot): old file systems
carry Kup(0) => Kent(-1, "") in the adm tree and no Kup(1).  The repair
tool passed around at the time (a gefs hacked with fixfs()) looked the
wrong key up, then upserted Kup(1) => Kent(-1, "") and deleted Kup(0), and
synced.

We make the same change the way a sync leaves it: the adm tree is written
anew (bulk-loaded, its block pointers keeping the snapshot's generation),
the snapshot tree is written anew with the adm snapshot pointing at it, the
blocks only the old trees used are freed in their arenas' logs, and the
arena headers and both superblocks are rewritten last (sync()'s order: new
blocks and logs, h0, superblocks, h1).  Data blocks are shared, not copied.
Refused when the file system has any other problem.

References: the gefix patch's fixfs(); ream.c initadm(); fs.c sync();
snap.c updatesnap() (which a live repair goes through).
"""

from __future__ import annotations

from imagebuild.disk.device import Storage
from imagebuild.errors import LayoutError
from imagebuild.fs.gefs.alloc import Allocator, ArenaModel, reserve_of
from imagebuild.fs.gefs.check import ArenaState, fsck, replay_arena
from imagebuild.fs.gefs.hash import blkhash
from imagebuild.fs.gefs.layout import (
    BLKSZ,
    KDLIST,
    LOGHDSZ,
    TPIVOT,
    ArenaHdr,
    Bptr,
    Superblock,
    TreeRec,
    ent_key,
    label_key,
    label_value_parts,
    snap_key,
    unpack_log,
    unpack_node,
    up_key,
)
from imagebuild.fs.gefs.reader import GefsVolume
from imagebuild.fs.gefs.tree import build_tree
from imagebuild.fs.gefs.writer import write_blocks


def _nodes(vol: GefsVolume, bp: Bptr, ht: int) -> list[int]:
    """Addresses of every node of the tree at `bp`."""
    out = [bp.addr]
    if ht > 1:
        node = unpack_node(vol.block(bp.addr))
        if node.btype == TPIVOT:
            for _, v in node.vals:
                out += _nodes(vol, Bptr.unpack(v), ht - 1)
    return out


def _arena_model(vol: GefsVolume, i: int, st: ArenaState) -> ArenaModel:
    a = ArenaModel(i, st.hdaddr, st.size, st.used, reserve_of(st.size),
                   [list(r) for r in st.free], st.loghash)
    a.logs = [(addr, bytearray(body)) for addr, body in st.logs]
    a.residue = {addr: vol.block(addr)[LOGHDSZ:] for addr, _ in st.logs}
    return a


def repair_adm_backlink(dev: Storage) -> str:
    """Fix a mis-reamed adm backlink on `dev` in place; returns a one-line summary.

    Raises LayoutError when there is nothing to repair or other problems.
    """
    vol = GefsVolume(dev.pread, dev.size)
    res = fsck(vol)
    if not res.misreamed_adm:
        raise LayoutError("gefs: the adm root backlink is where it belongs: nothing to repair")
    others = [e for e in res.errors if "Kup(0)" not in e]
    if others:
        raise LayoutError(f"gefs: not repairing a file system with other problems: {others[0]}")
    errors: list[str] = []
    arenas = [_arena_model(vol, i, replay_arena(vol, i, errors)) for i in range(len(vol.sb.arenas))]
    before = [set(m.log_blocks()) for m in arenas]
    alloc = Allocator(arenas)
    new: dict[int, bytes] = {}

    lv = vol.snap[label_key(b"adm")]
    gen, _ = label_value_parts(lv)
    rec = TreeRec.unpack(vol.snap[snap_key(gen)])
    kvs = vol.tree_kvs(rec.bp, rec.ht)
    del kvs[up_key(0)]
    kvs[up_key(1)] = ent_key(-1, b"")
    root, ht = build_tree(sorted(kvs.items()), gen, lambda: alloc.alloc(False), new.__setitem__)
    rec.bp, rec.ht = root, ht
    snap = dict(vol.snap)
    snap[snap_key(gen)] = rec.pack()
    sroot, sht = build_tree(sorted(snap.items()), vol.sb.nextgen - 1,
                            lambda: alloc.alloc(False), new.__setitem__)

    # free what only the old trees used: never a block another tree or a deadlist still holds
    keep: set[int] = set()
    for k, v in vol.snap.items():
        if k[0] == 4 and int.from_bytes(k[1:9], "big") != gen:
            t = TreeRec.unpack(v)
            keep.update(_nodes(vol, t.bp, t.ht))
        elif k[0] == KDLIST:
            bp = Bptr.unpack(v).addr
            while bp != -1:
                _, body, _, chain = unpack_log(vol.block(bp))
                keep.update(int.from_bytes(body[i : i + 8], "big")
                            for i in range(0, len(body) - 7, 8))
                bp = chain.addr
    old = _nodes(vol, vol.sb.snap_bp, vol.sb.snap_ht)
    old += [a for a in _nodes(vol, TreeRec.unpack(vol.snap[snap_key(gen)]).bp,
                              TreeRec.unpack(vol.snap[snap_key(gen)]).ht) if a not in keep]
    for addr in dict.fromkeys(old):
        alloc.free(addr)

    for m, logs0 in zip(arenas, before, strict=True):
        for addr, body in m.log_blocks():
            if (addr, body) not in logs0:
                new[addr] = body
    write_blocks(lambda d, o: dev.pwrite(d, o), new)
    hdrs = [ArenaHdr(m.logs[0][0], m.loghd_hash, m.size, m.used).block()
            for m in arenas]
    for m, h in zip(arenas, hdrs, strict=True):
        dev.pwrite(h, m.hdaddr)
    sb = vol.sb
    sb = Superblock(sb.blksz, sb.bufspc, sht, sroot, sb.snapdl_hd, sb.snapdl_tl, sb.flag,
                    sb.nextqid, sb.nextgen, sb.qgen,
                    [(m.hdaddr, blkhash(h)) for m, h in zip(arenas, hdrs, strict=True)])
    blk = sb.pack()
    dev.pwrite(blk, 0)
    dev.pwrite(blk, dev.size - dev.size % BLKSZ - BLKSZ)
    for m, h in zip(arenas, hdrs, strict=True):
        dev.pwrite(h, m.hdaddr + BLKSZ)
    return (f"adm root backlink moved from Kup(0) to Kup(1); {len(new)} blocks written, "
            f"{len(dict.fromkeys(old))} freed")
