"""How the hjfs server copies a source file's data: three replay modes behind api.BulkCopy.

mkfs's copy() of a file is, for hjfs, "allocate each 4095-byte block the
first time a write touches it, in file order".  Which blocks a write touches
depends on the holes mkfs leaves (all-zero 4088-byte pieces), so knowing
them means reading the file.  The writer picks a Copier per replay:

- `DryCopier` places every file as if it had no holes, without reading it:
  it checks everything, bounds the blocks needed, and is exact for a tree
  without holes; it records where each file went (`placed`).
- `PlanCopier` reads each file to find its holes and records, per device
  block, which source block goes there (the data is read again when the
  blocks are written).
- `StreamCopier` reads each file, a piece at a time, straight into a
  RunWriter's buffer as blocks and places them; a piece that may have holes
  or all-zero blocks is read again and cut as mkfs writes it.  The first
  `dense_files` files, known to have no holes, were written already and are
  only placed.

Every copier returns the number of writes mkfs makes (each bumps the file's
version through modified()).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Protocol

from imagebuild.errors import InputError
from imagebuild.fs.api import SourceFile
from imagebuild.fs.hjfs.emit import RunWriter, emit_file_blocks
from imagebuild.fs.hjfs.layout import RBLOCK, Dentry, howmany
from imagebuild.fs.hjfs.pieces import PIECE, cut_piece, read_pieces
from imagebuild.fs.hjfs.server import HjfsServer
from imagebuild.fs.mkfs import BUFLEN, open_for_reading, read_exact

FILE_KEY = 1 << 32  # file data blocks are recorded as file_index * FILE_KEY + file_block


class Copier(Protocol):
    """How disk/mkfs's copy of one file's data is placed: in full, by reference, or sparse
    (hjfs fs2.c / mkfs.c copy()); see `copy` for the contract.
    """

    def copy(self, server: HjfsServer, d: Dentry, source: SourceFile) -> int:
        """Place (and maybe write) `source`'s blocks under `d`; the number of writes mkfs makes.

        Raises InputError when the source cannot be read or changed size.
        """
        ...


class Placed(NamedTuple):
    """A file a DRY replay placed without reading it: where each of its blocks went."""

    source: SourceFile
    numbers: list[int]  # device block of each file block


def _place_dense(server: HjfsServer, d: Dentry, length: int) -> list[int]:
    """Every block of a file of `length` bytes without holes, allocated in turn."""
    numbers = server.place(d, range(howmany(length)))
    server.forget(numbers)
    return numbers


class DryCopier:
    """Places files as if they had no holes; never reads them."""

    def __init__(self) -> None:
        self.placed: list[Placed] = []  # every file copied, in order
        self.written = 0  # how many of those write_placed() wrote

    def copy(self, server: HjfsServer, d: Dentry, source: SourceFile) -> int:
        if not os.access(source.source_path, os.R_OK):
            raise InputError(f"{source.where}: can't read {source.source_path}")
        self.placed.append(Placed(source, _place_dense(server, d, source.length)))
        return -(-source.length // BUFLEN)

    def write_placed(self, out: RunWriter) -> int:
        """Write the placed files' data, reading each once, in order.

        Stops before the first file that turns out to have a hole (the DRY
        layout is wrong from there on) and returns how many files were
        written; they went where an exact replay puts them too.
        """
        for placed in self.placed[self.written :]:
            for piece in read_pieces(placed.source):
                if piece.holes:
                    return self.written
                first, last = piece.touched[0], piece.touched[-1]
                emit_file_blocks(out, placed.numbers[first : last + 1], piece)
            self.written += 1
        return self.written


class PlanCopier:
    """Reads files to find their holes; remembers which source block goes where."""

    def __init__(self) -> None:
        self.sources: list[SourceFile] = []

    def copy(self, server: HjfsServer, d: Dentry, source: SourceFile) -> int:
        self.sources.append(source)
        key = (len(self.sources) - 1) * FILE_KEY
        writes = 0
        for piece in read_pieces(source):
            writes += piece.writes
            numbers = server.place(d, piece.touched)
            for b, bl in zip(numbers, piece.touched, strict=True):
                server.blocks[b] = key + bl
        return writes


class StreamCopier:
    """Reads files into `sink`'s buffer, finding their holes, and writes them as it goes."""

    def __init__(self, sink: RunWriter, dense_files: int) -> None:
        self.sink = sink
        self.dense_files = dense_files
        self.copied = 0

    def copy(self, server: HjfsServer, d: Dentry, source: SourceFile) -> int:
        index = self.copied
        self.copied += 1
        if index < self.dense_files:  # written already by DryCopier.write_placed
            _place_dense(server, d, source.length)
            return -(-source.length // BUFLEN)
        sink, length = self.sink, source.length
        writes = next_block = 0  # blocks below next_block were touched already
        fd = open_for_reading(source)
        try:
            for offset in range(0, length, PIECE):  # most files: one piece
                size = min(PIECE, length - offset)
                count = sink.read_dense(fd, source, offset, size, last=offset + size == length)
                if count:  # every block, in order, none all zero
                    first = offset // RBLOCK
                    numbers = server.place(d, range(first, first + count))
                    server.forget(numbers)
                    sink.commit(numbers)
                    writes += -(-size // BUFLEN)
                    next_block = first + count
                    continue
                data = read_exact(fd, source, size, offset)
                piece, next_block = cut_piece(data, offset, next_block, length)
                numbers = server.place(d, piece.touched)
                server.forget(numbers)
                emit_file_blocks(sink, numbers, piece)
                writes += piece.writes
        finally:
            os.close(fd)
        return writes


__all__ = ["FILE_KEY", "Copier", "DryCopier", "Placed", "PlanCopier", "StreamCopier"]
