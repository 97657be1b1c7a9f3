"""hjfs writer: the fs partition as `hjfs -r`, the mkfile's console commands and disk/mkfs leave it.

The dist mkfile's `%.disk` rule runs, after the FAT step:

    hjfs -f $d/fs -n $s -S -r
    echo on; create /dist sys sys 775 d; create /usr sys sys 775 d
    newuser glenda; newuser adm +glenda; newuser sys +glenda; newuser upas +glenda
    disk/mkfs -z 4096 -U -s /n/src9 -d /n/newfs <{cat $proto $bootproto}

We replay that sequence on an in-memory hjfs server (server.py): ream and
the user table, the console lines (cons.py), then imagebuild.fs.mkfs's
requests; then we write the final blocks in long runs (emit.py).  Nothing
touches the device until the whole tree has been placed, so a tree too big
for the partition fails before anything is written.

References (9front, sys/src/cmd/hjfs unless noted): fs1.c ream(),
createroot(), writeusers(), readusers(); conv.c (block packing); dat.h.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import LayoutError
from imagebuild.fs.hjfs.cons import MKFILE_CONSOLE, console
from imagebuild.fs.hjfs.copy import FILE_KEY, Copier, DryCopier, PlanCopier, StreamCopier
from imagebuild.fs.hjfs.emit import RUN_BYTES, RunWriter, SourceReader, emit_file_blocks
from imagebuild.fs.hjfs.layout import (
    BLOCK,
    DEPERBLK,
    RBLOCK,
    REFPERBLK,
    SUPERBLK,
    TRAW,
    HjfsSummary,
    Superblock,
    block_of,
    howmany,
    indirect_blocks_for,
    pack_dentries,
    pack_indir,
    pack_refs,
    ref_blocks,
)
from imagebuild.fs.hjfs.pieces import Piece
from imagebuild.fs.hjfs.server import HjfsServer
from imagebuild.fs.hjfs.users import readusers, writeusers
from imagebuild.fs.mkfs import mkfs
from imagebuild.fs.proto import ProtoEntry
from imagebuild.util.progress import Progress

# Who runs mkfs: its attach name becomes every new file's creator and muid.  It must be a
# user hjfs knows at that point; the dist is built as glenda.
MKFS_USER = "glenda"
DEFAULT_OWNER = ("sys", "sys")


class HjfsPlan:
    """A replayed fs partition: the server's final state and the copier that placed the data."""

    def __init__(self, server: HjfsServer, copier: Copier) -> None:
        self.server = server
        self.copier = copier

    @property
    def size(self) -> int:
        return self.server.size

    @property
    def fend(self) -> int:
        return self.server.fend

    @property
    def blocks_needed(self) -> int:
        """Blocks in use at the end, counting any that did not fit (a bound for a dry replay)."""
        alloc = self.server.alloc
        return self.server.size - alloc.refs.count(0) + alloc.overflow

    @property
    def fits(self) -> bool:
        return self.blocks_needed <= self.server.size

    def check_fits(self, name: str) -> None:
        """LayoutError naming device `name` if the tree needs more blocks than it has."""
        if not self.fits:
            raise LayoutError(
                f"{name}: the tree needs {self.blocks_needed} hjfs blocks of {BLOCK} bytes "
                f"({self.blocks_needed * BLOCK} bytes) but the partition has "
                f"{self.server.size} blocks"
            )

    def summary(self) -> HjfsSummary:
        """What `df` and a walk of the tree would report after the replay."""
        server = self.server
        free = server.alloc.refs.count(0)
        files = dirs = nbytes = 0
        for node in server.paths.values():
            if node.dentry.is_dir:
                dirs += 1
            else:
                files += 1
                nbytes += node.dentry.size
        return HjfsSummary(server.size, server.size - free, free, files, dirs, nbytes, BLOCK)

    def write(self, dev: BlockDevice, *, progress: Progress | None = None) -> None:
        """Write superblock, reference counts and every block the replay holds, in runs.

        File data recorded by a plan replay is read again from the sources
        here; a stream replay wrote it already.
        """
        self.write_runs(RunWriter(dev, progress))

    def write_runs(self, out: RunWriter) -> None:
        copier = self.copier
        if isinstance(copier, DryCopier) and copier.written < len(copier.placed):
            raise ValueError("a dry replay writes its files' data first (write_placed)")
        self.check_fits(out.dev.name)
        server = self.server
        out.put(SUPERBLK, Superblock(
            server.size, server.fstart, server.fend, server.root, server.qidpath
        ).pack())
        refs = server.alloc.refs
        for k in range(server.fend - server.fstart):
            counts = refs[k * REFPERBLK : (k + 1) * REFPERBLK]
            # ream(): entries past the end of the device read as the sentinel
            out.put(server.fstart + k, pack_refs(counts, sentinel_fill=True))
        sources = SourceReader(copier.sources if isinstance(copier, PlanCopier) else [])
        blocks = server.blocks
        numbers = sorted(blocks)
        i = 0
        try:
            while i < len(numbers):
                b = numbers[i]
                content = blocks[b]
                if isinstance(content, int):
                    # a run of consecutive blocks of one file: read it at once
                    n = 1
                    while (
                        n < RUN_BYTES // BLOCK
                        and i + n < len(numbers)
                        and numbers[i + n] == b + n
                        and blocks[b + n] == content + n
                    ):
                        n += 1
                    index, bl = divmod(content, FILE_KEY)
                    data = sources.read(index, bl * RBLOCK, n * RBLOCK)
                    piece = Piece(bl * RBLOCK, data, range(bl, bl + n), 0, False)
                    emit_file_blocks(out, range(b, b + n), piece)
                    i += n
                    continue
                if isinstance(content, list):
                    out.put(b, pack_dentries(content))
                elif isinstance(content, bytes):
                    out.put(b, block_of(TRAW, content))
                else:
                    out.put(b, pack_indir(content))
                i += 1
            out.flush()
        finally:
            sources.close()


def blocks_bound(entries: Sequence[ProtoEntry], console_lines: int) -> int:
    """An upper bound of the blocks hjfs needs past its reference counts for `entries`.

    Every file as if it had no holes (holes only save blocks) with its
    indirect blocks; every directory's entry blocks (DEPERBLK entries each,
    counting every entry, repeated ones too) with theirs; a margin for the
    root, /adm/users and each console line.  Cheap: no file is read.
    """
    children: Counter[str] = Counter()
    total = 0
    for e in entries:
        children[e.path.rsplit("/", 1)[0] or "/"] += 1
        if not e.is_dir:
            n = howmany(e.length)
            total += n + indirect_blocks_for(n)
    for count in children.values():
        n = -(-(count + 4) // DEPERBLK)  # + the entries ream and the console may add
        total += n + indirect_blocks_for(n)
    return total + 16 + 8 * console_lines


def _replay(
    size_blocks: int,
    entries: Sequence[ProtoEntry],
    copier: Copier,
    *,
    timestamp: int | None,
    now: int,
    default_owner: tuple[str, str],
    console_lines: Sequence[str],
    mkfs_user: str,
) -> HjfsPlan:
    """hjfs -r, the console lines, then mkfs, on a fresh server copying data with `copier`."""
    if size_blocks < 1:
        raise LayoutError("hjfs: device file too short (less than one 4096-byte block)")
    server = HjfsServer(size_blocks, now, copier)
    server.ream()
    writeusers(server)
    readusers(server)
    for line in console_lines:
        console(server, line)
    mkfs(server, entries, user=mkfs_user, default_owner=default_owner, timestamp=timestamp)
    return HjfsPlan(server, copier)


def plan(
    size_blocks: int,
    entries: Sequence[ProtoEntry],
    *,
    timestamp: int | None,
    default_owner: tuple[str, str] = DEFAULT_OWNER,
    console: Sequence[str] = MKFILE_CONSOLE,
    mkfs_user: str = MKFS_USER,
) -> HjfsPlan:
    """Replay ream, the console lines and mkfs on a device of `size_blocks` 4096-byte blocks.

    Reads every source to find its holes; nothing is written.  The result
    tells `blocks_needed` and can `write()` itself later.  Raises LayoutError
    for what hjfs or mkfs would refuse, InputError for unreadable sources.
    """
    return _replay(
        size_blocks,
        entries,
        PlanCopier(),
        timestamp=timestamp,
        now=int(time.time()) if timestamp is None else timestamp,
        default_owner=default_owner,
        console_lines=console,
        mkfs_user=mkfs_user,
    )


def ream_and_populate(
    dev: BlockDevice,
    entries: Sequence[ProtoEntry],
    *,
    timestamp: int | None,
    default_owner: tuple[str, str] = DEFAULT_OWNER,
    console: Sequence[str] = MKFILE_CONSOLE,
    mkfs_user: str = MKFS_USER,
    progress: Progress | None = None,
) -> HjfsSummary:
    """Make the fs partition `dev` what the dist mkfile's hjfs + mkfs steps make it.

    `timestamp` pins hjfs's clock (every creation and modification time)
    and clamps source mtimes (SOURCE_DATE_EPOCH); None uses the current
    time and the sources' own mtimes.  Entries without an owner get
    `default_owner` (uid, gid); `mkfs_user` is who mkfs attaches as.
    `progress` is called as progress("fs", bytes written so far, None)
    (imagebuild.util.progress).  Raises LayoutError
    (the tree does not fit, or hjfs/mkfs refuse an entry) before writing
    anything, InputError for a source that cannot be read.

    When a cheap bound (blocks_bound) shows the tree fits, one replay reads
    each file once, finds its holes and writes its data as it goes; a
    refusal then comes after some data was written (the pipeline writes to
    a temporary file, removed on error).  Otherwise a first replay places
    every file without reading it, as if it had no holes: it raises every
    error (names, owners, parents, unreadable sources) and, since holes
    only save blocks, bounds the space needed.
    If that fits, each file is read once and its data written where that
    replay put it, which is where hjfs puts it unless the file has holes.
    At the first file with a hole a second replay takes over: it places the
    files before that one again without reading them, and reads the rest
    to find their holes, writing their data as it goes.  If the first
    replay does not fit, an exact one decides, before anything is written,
    whether the holes make the tree fit.
    """
    size = dev.size // BLOCK
    now = int(time.time()) if timestamp is None else timestamp

    def replay(copier: Copier) -> HjfsPlan:
        return _replay(
            size,
            entries,
            copier,
            timestamp=timestamp,
            now=now,
            default_owner=default_owner,
            console_lines=console,
            mkfs_user=mkfs_user,
        )

    out = RunWriter(dev, progress)
    if blocks_bound(entries, len(console)) + ref_blocks(size) + SUPERBLK + 1 <= size:
        # it fits whatever the holes: one replay, each file read once and written at once
        model = replay(StreamCopier(out, 0))
        model.write_runs(out)
        return model.summary()
    dry = DryCopier()
    model = replay(dry)
    if not model.fits:
        model = replay(PlanCopier())
        model.check_fits(dev.name)
    else:
        dense = dry.write_placed(out)
        if dense < len(dry.placed):
            model = replay(StreamCopier(out, dense))
    model.write_runs(out)
    return model.summary()


__all__ = [
    "DEFAULT_OWNER",
    "MKFILE_CONSOLE",
    "MKFS_USER",
    "HjfsPlan",
    "blocks_bound",
    "plan",
    "ream_and_populate",
]
