"""mkfs -z 4096's copy of one source, seen from hjfs: which 4095-byte blocks each piece touches.

mkfs writes 4088-byte pieces (imagebuild.fs.mkfs.copy_writes); hjfs
allocates a block the first time a write touches it.  Reading a file in
pieces of PIECE bytes, which start on both a 4088-byte write boundary and a
4095-byte block boundary, tells the blocks each piece makes hjfs allocate,
in order, without going through every write.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from imagebuild.fs.api import SourceFile
from imagebuild.fs.hjfs.layout import RBLOCK, howmany
from imagebuild.fs.mkfs import BUFLEN, open_source, read_exact, read_whole, zero_pieces

# lcm(4088, 4095) = 2391480 bytes: a multiple of both the write and the block size.
PIECE = BUFLEN * RBLOCK // 7


class Piece(NamedTuple):
    """A piece of a source file as mkfs -z 4096 copies it into hjfs."""

    offset: int
    data: bytes
    touched: Sequence[int]  # file blocks whose first write falls in this piece, ascending
    writes: int
    holes: bool  # whether mkfs skips any of it (or writes the final zero byte)
    # the file blocks of this piece that are all zero (left unwritten); None: not looked for
    zero_blocks: Collection[int] | None = None


def read_pieces(source: SourceFile) -> Iterator[Piece]:
    """Read `source` as mkfs -z 4096 copies it into hjfs, a piece of PIECE bytes at a time.

    mkfs reads `length` bytes in 4088-byte pieces; an all-zero piece is
    skipped with seek (a hole), any other is written.  If the last piece was
    a hole it writes one zero byte at length-1.  Raises InputError if the
    source cannot be read or changes size.
    """
    length = source.length
    if 0 < length <= PIECE:  # most files: one read
        yield cut_piece(read_whole(source), 0, 0, length)[0]
        return
    fd = open_source(source)
    try:
        offset = 0
        next_block = 0  # blocks below this one were touched already
        while offset < length:
            data = read_exact(fd, source, min(PIECE, length - offset), offset)
            piece, next_block = cut_piece(data, offset, next_block, length)
            yield piece
            offset += len(data)
    finally:
        os.close(fd)


def cut_piece(data: bytes, offset: int, next_block: int, length: int) -> tuple[Piece, int]:
    """The Piece of `data`, read at byte `offset` of a `length`-byte source whose blocks below
    `next_block` were touched already; and the next block not touched yet.

    A piece without a zero byte (most of a source tree) is known to have
    neither holes nor zero blocks after one scan for that byte; only the
    others are searched piece by piece and block by block.
    """
    end = offset + len(data)
    first = offset // RBLOCK  # pieces start on a block boundary
    if 0 not in data:
        dense = range(max(next_block, first), (end - 1) // RBLOCK + 1)
        return Piece(offset, data, dense, -(-len(data) // BUFLEN), False, ()), dense.stop
    touched: list[int] = []
    writes = 0
    last_hole = False
    zero = zero_pieces(data, BUFLEN)
    if not zero:
        writes = -(-len(data) // BUFLEN)
        touched.extend(range(max(next_block, first), (end - 1) // RBLOCK + 1))
    else:
        skipped = set(zero)
        for k, start in enumerate(range(0, len(data), BUFLEN)):
            last_hole = k in skipped
            if last_hole:
                continue
            chunk_end = min(start + BUFLEN, len(data))
            writes += 1
            low = max((offset + start) // RBLOCK, next_block)
            last = (offset + chunk_end - 1) // RBLOCK
            touched.extend(range(low, last + 1))
            next_block = max(next_block, last + 1)
    if touched:
        next_block = max(next_block, touched[-1] + 1)
    if end == length and last_hole:  # the final one-byte write
        writes += 1
        nblocks = howmany(length)
        if next_block < nblocks:
            touched.append(nblocks - 1)
    zero_blocks = {first + k for k in zero_pieces(data, RBLOCK)}
    return Piece(offset, data, touched, writes, bool(zero), zero_blocks), next_block


def scan_holes(source: Path, length: int, where: str = "") -> tuple[list[int], int]:
    """The file blocks mkfs -z 4096 makes hjfs allocate for `source` (`length` bytes), in
    order, and how many writes it makes."""
    touched: list[int] = []
    writes = 0
    for piece in read_pieces(SourceFile(source, length, where or str(source))):
        touched.extend(piece.touched)
        writes += piece.writes
    return touched, writes


__all__ = ["PIECE", "Piece", "cut_piece", "read_pieces", "scan_holes"]
