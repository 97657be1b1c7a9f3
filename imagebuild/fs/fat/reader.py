"""Read a FAT12/16/32 file system: the BPB, directories with long names, files.

What 9front's dossrv does for a mounted FAT, for our own checks and for
`imagebuild inspect`/`cat`.  It reads any FAT, not only format's: NT
lower-case bits, subdirectories and deleted entries are understood.

Every inconsistency (a BPB that describes no usable FAT, a cluster chain
that leaves the volume, loops, ends early or runs into a free cluster, a
directory loop) raises ImageFormatError naming the structure and value.
Orphaned long-name slots (bad checksum or order) are ignored, as every FAT
reader does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import datetime

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import ImageBuildError, ImageFormatError
from imagebuild.fs.fat.bpb import BAD_CLUSTER, EOF_MARK, FatParams
from imagebuild.fs.fat.dirent import (
    ATTR_DIRECTORY,
    ATTR_VOLUME_LABEL,
    DIR_ENTRY_SIZE,
    FREE_ENTRY,
    LFN_LAST,
    DirEntry,
    LfnSlot,
    dos_datetime,
    lfn_checksum,
)
from imagebuild.util.record import Record


class FatPathError(ImageBuildError):
    """A path names no file or directory of the FAT (or the wrong kind)."""


class FatEntry(Record):
    """A directory entry as a reader sees it."""

    FIELDS = ("name", "short_name", "size", "attributes", "mtime", "is_dir", "first_cluster")
    __slots__ = FIELDS

    name: str  # the long name, else the 8.3 name ("PLAN9.INI")
    short_name: str
    size: int
    attributes: int
    mtime: datetime  # UTC; 1980-01-01 when the stored date is not a valid one
    is_dir: bool
    first_cluster: int

    def __init__(
        self,
        name: str,
        short_name: str,
        size: int,
        attributes: int,
        mtime: datetime,
        is_dir: bool,
        first_cluster: int,
    ) -> None:
        self.name = name
        self.short_name = short_name
        self.size = size
        self.attributes = attributes
        self.mtime = mtime
        self.is_dir = is_dir
        self.first_cluster = first_cluster


class FatVolume:
    """A FAT file system on a block device, read-only."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self.source = f"{dev.name} FAT"
        if dev.size < 512:
            raise ImageFormatError(f"{self.source}: {dev.size} bytes is too small for a FAT")
        params = FatParams.unpack(dev.pread(512, 0), f"{dev.name} boot sector")
        params.check(dev.size // params.bytes_per_sector if params.bytes_per_sector else None,
                     f"{dev.name} boot sector")
        self.params = params
        self.fat_bits = params.fat_bits
        # Highest cluster number both the data area and the FAT can hold (format's FAT32
        # FAT may be a few entries short of the data area; see docs/fat.md).
        self.max_cluster = min(params.cluster_count + 1, params.fat_entries - 1)
        self._fat: bytes | None = None

    # -- clusters ----------------------------------------------------------------------------
    @property
    def fat(self) -> bytes:
        """The first FAT's bytes (read once, on first use)."""
        if self._fat is None:
            p = self.params
            self._fat = self.dev.pread(p.fat_sectors * p.bytes_per_sector,
                                       p.first_fat_sector * p.bytes_per_sector)
        return self._fat

    def next_cluster(self, cluster: int) -> int:
        """The FAT entry of `cluster`: the next cluster of its chain, or an end/bad/free mark."""
        fat = self.fat
        if self.fat_bits == 12:
            offset = cluster * 3 // 2
            value = fat[offset] | fat[offset + 1] << 8
            return value >> 4 if cluster & 1 else value & 0xFFF
        if self.fat_bits == 16:
            return int(struct.unpack_from("<H", fat, cluster * 2)[0])
        return int(struct.unpack_from("<I", fat, cluster * 4)[0]) & 0x0FFFFFFF

    def chain(self, first: int, what: str, limit: int | None = None) -> list[int]:
        """The clusters of a chain from `first`: all of them, or the first `limit`."""
        eof, bad = EOF_MARK[self.fat_bits], BAD_CLUSTER[self.fat_bits]
        clusters: list[int] = []
        cluster = first
        while limit is None or len(clusters) < limit:
            if not 2 <= cluster <= self.max_cluster:
                raise ImageFormatError(
                    f"{self.source}: {what}: cluster {cluster} lies outside 2..{self.max_cluster}"
                )
            clusters.append(cluster)
            if len(clusters) > self.max_cluster:
                raise ImageFormatError(f"{self.source}: {what}: cluster chain loops")
            following = self.next_cluster(cluster)
            if following >= eof:
                if limit is not None and len(clusters) < limit:
                    raise ImageFormatError(
                        f"{self.source}: {what}: cluster chain ends after {len(clusters)} "
                        f"clusters, {limit} needed"
                    )
                break
            if following == bad or following < 2:
                raise ImageFormatError(
                    f"{self.source}: {what}: cluster {cluster} is followed by "
                    f"{'a bad' if following == bad else 'a free'} cluster mark {following:#x}"
                )
            cluster = following
        return clusters

    def _read_clusters(self, clusters: list[int]) -> bytes:
        """The clusters' contents, read in runs of consecutive clusters."""
        p = self.params
        parts = []
        i = 0
        while i < len(clusters):
            j = i + 1
            while j < len(clusters) and clusters[j] == clusters[j - 1] + 1:
                j += 1
            parts.append(self.dev.pread((j - i) * p.cluster_size,
                                        p.cluster_sector(clusters[i]) * p.bytes_per_sector))
            i = j
        return b"".join(parts)

    # -- directories -------------------------------------------------------------------------
    def _root_bytes(self) -> bytes:
        p = self.params
        if p.is_fat32:
            return self._read_clusters(self.chain(p.root_cluster, "root directory"))
        return self.dev.pread(p.root_dir_sectors * p.bytes_per_sector,
                              p.first_root_sector * p.bytes_per_sector)

    def _dir_entries(self, raw: bytes, where: str) -> list[FatEntry]:
        entries = []
        for record in scan_directory(raw):
            entry = record.entry
            if entry.attributes & ATTR_VOLUME_LABEL:
                continue
            short = entry.display_name()
            if short in (".", ".."):
                continue
            entries.append(FatEntry(
                name=record.long_name or short,
                short_name=short,
                size=entry.size,
                attributes=entry.attributes,
                mtime=dos_datetime(entry.time, entry.date),
                is_dir=bool(entry.attributes & ATTR_DIRECTORY),
                first_cluster=entry.first_cluster if self.params.is_fat32 else entry.cluster_low,
            ))
        return entries

    def _list(self, directory: FatEntry | None, path: str) -> list[FatEntry]:
        if directory is None:
            return self._dir_entries(self._root_bytes(), "/")
        raw = self._read_clusters(self.chain(directory.first_cluster, f"directory {path}"))
        return self._dir_entries(raw, path)

    def _lookup(self, path: str) -> tuple[FatEntry | None, str]:
        """The entry `path` names (None: the root) and its normalised path."""
        current: FatEntry | None = None
        walked = ""
        for part in (p for p in path.split("/") if p):
            if current is not None and not current.is_dir:
                raise FatPathError(f"{self.source}: {walked}: not a directory")
            listing = self._list(current, walked or "/")
            folded = part.casefold()
            for entry in listing:
                if folded in (entry.name.casefold(), entry.short_name.casefold()):
                    break
            else:
                raise FatPathError(f"{self.source}: {walked}/{part}: no such file or directory")
            current = entry
            walked += "/" + entry.name
        return current, walked or "/"

    # -- public ----------------------------------------------------------------------------------
    def listdir(self, path: str = "/") -> list[FatEntry]:
        """The entries of a directory, in on-disk order (without "." and "..")."""
        entry, where = self._lookup(path)
        if entry is not None and not entry.is_dir:
            raise FatPathError(f"{self.source}: {where}: not a directory")
        return self._list(entry, where)

    def read(self, path: str) -> bytes:
        """A file's contents."""
        entry, where = self._lookup(path)
        if entry is None or entry.is_dir:
            raise FatPathError(f"{self.source}: {where}: is a directory")
        if entry.size == 0:
            return b""
        count = -(-entry.size // self.params.cluster_size)
        data = self._read_clusters(self.chain(entry.first_cluster, f"file {where}", count))
        return data[: entry.size]

    def walk(self, path: str = "/") -> Iterator[tuple[str, FatEntry]]:
        """Every entry below `path`, depth first, as ("/DIR/NAME", entry)."""
        entry, where = self._lookup(path)
        seen: set[int] = set()
        yield from self._walk(entry, "" if where == "/" else where, seen)

    def _walk(
        self, directory: FatEntry | None, prefix: str, seen: set[int]
    ) -> Iterator[tuple[str, FatEntry]]:
        for entry in self._list(directory, prefix or "/"):
            path = f"{prefix}/{entry.name}"
            yield path, entry
            if entry.is_dir:
                if entry.first_cluster in seen:
                    raise ImageFormatError(f"{self.source}: directory {path} loops back")
                seen.add(entry.first_cluster)
                yield from self._walk(entry, path, seen)


class DirRecord(Record):
    """A short entry found in a directory's bytes, with its long name and where both lie.

    `first_slot` and `slot` are 32-byte slot indexes in the directory: its
    long-name slots (if any) run from first_slot, the short entry is at slot.
    """

    FIELDS = ("first_slot", "slot", "long_name", "entry")
    __slots__ = FIELDS

    first_slot: int
    slot: int
    long_name: str | None
    entry: DirEntry

    def __init__(self, first_slot: int, slot: int, long_name: str | None, entry: DirEntry) -> None:
        self.first_slot = first_slot
        self.slot = slot
        self.long_name = long_name
        self.entry = entry


def scan_directory(raw: bytes) -> Iterator[DirRecord]:
    """Every short entry of a directory's bytes (volume labels and dot entries included).

    Stops at the first never-used slot (name[0] == 0); skips deleted ones.
    A long name counts only when its slots are complete, in order and carry
    the short name's checksum; orphaned slots are ignored, as every reader does.
    """
    units: list[int] = []
    expect = 0  # ordinal of the next long-name slot, 0 when none is pending
    checksum = -1
    start = 0
    for index in range(len(raw) // DIR_ENTRY_SIZE):
        offset = index * DIR_ENTRY_SIZE
        first = raw[offset]
        if first == 0:
            return
        if first == FREE_ENTRY:
            expect = 0
            continue
        entry = DirEntry.unpack(raw, offset)
        if entry.is_long_name_slot:
            slot = LfnSlot.unpack(raw, offset)
            ordinal = slot.ordinal & 0x3F
            if slot.ordinal & LFN_LAST and ordinal:
                units, expect, checksum, start = slot.units(), ordinal - 1, slot.checksum, index
            elif expect and ordinal == expect and slot.checksum == checksum:
                units, expect = slot.units() + units, expect - 1
            else:
                units, expect, checksum = [], 0, -1
            continue
        long_name = None
        if units and expect == 0 and checksum == lfn_checksum(entry.name):
            long_name = _decode_units(units)
        yield DirRecord(start if long_name is not None else index, index, long_name, entry)
        units, expect, checksum = [], 0, -1


def _decode_units(units: list[int]) -> str:
    if 0 in units:
        units = units[: units.index(0)]
    return struct.pack(f"<{len(units)}H", *units).decode("utf-16-le", errors="replace")
