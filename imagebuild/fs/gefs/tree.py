"""Bulk-load a gefs B-epsilon tree bottom-up from sorted key/value pairs.

A running gefs grows its trees from one leaf by buffered inserts, splits and
merges (tree.c btupsert(), flush()); the shape depends on the order of the
updates.  We write the final contents directly, in the shape tree.c would
accept and check.c checks: leaves and pivots filled to about three quarters
(so the next inserts do not split at once), every non-root node holding at
least two entries, pivot keys equal to the first key of their child, every
pivot entry carrying the child's fill (blkfill()), pivot buffers empty.

References: tree.c setval()/setptr() (node layout, via layout.pack_node),
check.c checktree() (the rules), blk.c newblk() (allocation, via Allocator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from imagebuild.fs.gefs.hash import blkhash
from imagebuild.fs.gefs.layout import (
    LEAFSPC,
    PIVSPC,
    TLEAF,
    TPIVOT,
    Bptr,
    kv_size,
    node_fill,
    pack_node,
    pivot_value,
)

FILL_NUM, FILL_DEN = 3, 4  # target fill of bulk-loaded nodes

KV = tuple[bytes, bytes]


def _chunks(kvs: Sequence[KV], spc: int) -> list[list[KV]]:
    """Split `kvs` into runs of at most 3/4 of `spc` bytes, each of at least 2 entries."""
    target = spc * FILL_NUM // FILL_DEN
    out: list[list[KV]] = []
    cur: list[KV] = []
    used = 0
    for kv in kvs:
        sz = kv_size(*kv)
        if cur and used + sz > target and len(cur) >= 2:
            out.append(cur)
            cur, used = [], 0
        cur.append(kv)
        used += sz
    if cur:
        out.append(cur)
    if len(out) > 1 and len(out[-1]) < 2:  # borrow from the previous run
        out[-1].insert(0, out[-2].pop())
    return out


def build_tree(
    kvs: Sequence[KV], gen: int, alloc: Callable[[], int], put: Callable[[int, bytes], None]
) -> tuple[Bptr, int]:
    """Write a tree holding `kvs` (sorted, distinct keys); returns (root pointer, height).

    `alloc()` gives a block address, `put(addr, block)` stores the block;
    every block pointer carries generation `gen`.  An empty tree is one
    empty leaf, as gefs keeps it.
    """
    level: list[tuple[bytes, Bptr, int]] = []
    for run in _chunks(kvs, LEAFSPC) or [[]]:
        blk = pack_node(TLEAF, run)
        addr = alloc()
        put(addr, blk)
        first = run[0][0] if run else b""
        level.append((first, Bptr(addr, blkhash(blk), gen), node_fill(TLEAF, run)))
    ht = 1
    while len(level) > 1:
        ptrs = [(k, pivot_value(bp, fill)) for k, bp, fill in level]
        nxt = []
        for run in _chunks(ptrs, PIVSPC):
            blk = pack_node(TPIVOT, run)
            addr = alloc()
            put(addr, blk)
            bp = Bptr(addr, blkhash(blk), gen)
            nxt.append((run[0][0], bp, node_fill(TPIVOT, run)))
        level = nxt
        ht += 1
    return level[0][1], ht
