"""mkfs -z 4096's copy of one source, seen from hjfs: which 4095-byte blocks each piece touches.

mkfs writes 4088-byte pieces (imagebuild.fs.mkfs.copy_writes); hjfs
allocates a block the first time a write touches it.  Reading a file in
pieces of PIECE bytes, which start on both a 4088-byte write boundary and a
4095-byte block boundary, tells the blocks each piece makes hjfs allocate,
in order, without going through every write.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from imagebuild.fs.api import SourceFile
from imagebuild.fs.hjfs.layout import RBLOCK, howmany
from imagebuild.fs.mkfs import BUFLEN, open_source, read_exact, zero_pieces

# lcm(4088, 4095) = 2391480 bytes: a multiple of both the write and the block size.
PIECE = BUFLEN * RBLOCK // 7


class Piece(NamedTuple):
    """A piece of a source file as mkfs -z 4096 copies it into hjfs."""

    offset: int
    data: bytes
    touched: list[int]  # file blocks whose first write falls in this piece
    writes: int
    holes: bool  # whether mkfs skips any of it (or writes the final zero byte)


def read_pieces(source: SourceFile) -> Iterator[Piece]:
    """Read `source` as mkfs -z 4096 copies it into hjfs, a piece of PIECE bytes at a time.

    mkfs reads `length` bytes in 4088-byte pieces; an all-zero piece is
    skipped with seek (a hole), any other is written.  If the last piece was
    a hole it writes one zero byte at length-1.  Raises InputError if the
    source cannot be read or changes size.
    """
    length = source.length
    nblocks = howmany(length)
    fd = open_source(source)
    try:
        offset = 0
        next_block = 0  # blocks below this one were touched already
        while offset < length:
            data = read_exact(fd, source, min(PIECE, length - offset), offset)
            end = offset + len(data)
            touched: list[int] = []
            writes = 0
            last_hole = False
            zero = zero_pieces(data, BUFLEN)
            if not zero:
                writes = -(-len(data) // BUFLEN)
                touched.extend(range(max(next_block, offset // RBLOCK), (end - 1) // RBLOCK + 1))
            else:
                skipped = set(zero)
                for k, start in enumerate(range(0, len(data), BUFLEN)):
                    last_hole = k in skipped
                    if last_hole:
                        continue
                    chunk_end = min(start + BUFLEN, len(data))
                    writes += 1
                    first = max((offset + start) // RBLOCK, next_block)
                    last = (offset + chunk_end - 1) // RBLOCK
                    touched.extend(range(first, last + 1))
                    next_block = max(next_block, last + 1)
            if touched:
                next_block = max(next_block, touched[-1] + 1)
            if end == length and last_hole:  # the final one-byte write
                writes += 1
                if next_block < nblocks:
                    touched.append(nblocks - 1)
            yield Piece(offset, data, touched, writes, holes=bool(zero))
            offset = end
    finally:
        os.close(fd)


def scan_holes(source: Path, length: int, where: str = "") -> tuple[list[int], int]:
    """The file blocks mkfs -z 4096 makes hjfs allocate for `source` (`length` bytes), in
    order, and how many writes it makes."""
    touched: list[int] = []
    writes = 0
    for piece in read_pieces(SourceFile(source, length, where or str(source))):
        touched.extend(piece.touched)
        writes += piece.writes
    return touched, writes


__all__ = ["PIECE", "Piece", "read_pieces", "scan_holes"]
