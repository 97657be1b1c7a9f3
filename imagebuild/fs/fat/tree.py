"""Add directories and files to a freshly formatted FAT, as `dossrv` + `mkdir`/`cp` do.

The dist mkfile fills the hybrid ISO's ESP and efiboot.fat this way
(`mkdir /n/esp/efi; mkdir /n/esp/efi/boot; cp ... /n/esp/efi/boot`), which
disk/format (root files only) cannot.  We allocate each new directory or
file the lowest free clusters, in the order given, directories before the
files under them; entries use format.c's naming (8.3, else long-name slots
and an alias).  FAT12/16 roots are the fixed root region; a FAT32 root or
a subdirectory that fills its one cluster is an error (these trees are tiny).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from imagebuild.disk.device import BlockDevice
from imagebuild.fs.fat.bpb import FatParams
from imagebuild.fs.fat.dirent import (
    ATTR_DIRECTORY,
    DIR_ENTRY_SIZE,
    DirEntry,
    dos_time_date,
    is_long_name,
    lfn_checksum,
    lfn_slots,
    make_alias,
    short_name_field,
)
from imagebuild.fs.fat.format import FatError

_END = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}  # the end-of-chain value written


class _Fat:
    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self.p = FatParams.unpack(dev.pread(512, 0), f"{dev.name} boot sector")
        p = self.p
        self.table = bytearray(dev.pread(p.fat_sectors * p.bytes_per_sector,
                                         p.first_fat_sector * p.bytes_per_sector))
        self.max_cluster = min(p.cluster_count + 1, p.fat_entries - 1)
        self.alias_id = 1

    def get(self, cluster: int) -> int:
        if self.p.fat_bits == 12:
            off = cluster * 3 // 2
            value = self.table[off] | self.table[off + 1] << 8
            return value >> 4 if cluster & 1 else value & 0xFFF
        if self.p.fat_bits == 16:
            return int(struct.unpack_from("<H", self.table, cluster * 2)[0])
        return int(struct.unpack_from("<I", self.table, cluster * 4)[0]) & 0x0FFFFFFF

    def set(self, cluster: int, value: int) -> None:
        if self.p.fat_bits == 12:
            off = cluster * 3 // 2
            word = self.table[off] | self.table[off + 1] << 8
            word = (word & 0x000F) | (value << 4) if cluster & 1 else (word & 0xF000) | value
            self.table[off], self.table[off + 1] = word & 0xFF, word >> 8
        elif self.p.fat_bits == 16:
            struct.pack_into("<H", self.table, cluster * 2, value)
        else:
            struct.pack_into("<I", self.table, cluster * 4, value)

    def allocate(self, count: int, what: str) -> int:
        """The lowest `count` free clusters, chained; returns the first."""
        chain: list[int] = []
        cluster = 2
        while len(chain) < count:
            if cluster > self.max_cluster:
                raise FatError(f"{what}: does not fit on the FAT ({self.dev.name})")
            if self.get(cluster) == 0:
                chain.append(cluster)
            cluster += 1
        for this, following in zip(chain, [*chain[1:], _END[self.p.fat_bits]], strict=True):
            self.set(this, following)
        return chain[0]

    def write_chain(self, first: int, data: bytes) -> None:
        size = self.p.cluster_size
        cluster = first
        for pos in range(0, len(data), size):
            self.dev.pwrite(data[pos : pos + size].ljust(size, b"\0"),
                            self.p.cluster_sector(cluster) * self.p.bytes_per_sector)
            cluster = self.get(cluster)

    def flush(self) -> None:
        p = self.p
        for copy in range(p.fat_count):
            self.dev.pwrite(self.table, (p.first_fat_sector + copy * p.fat_sectors)
                            * p.bytes_per_sector)


class _Dir:
    """A directory's entries: the fixed root region, or one cluster."""

    def __init__(self, fat: _Fat, cluster: int | None) -> None:
        self.fat, self.cluster = fat, cluster
        p = fat.p
        if cluster is None:
            if p.is_fat32:
                raise FatError(f"{fat.dev.name}: adding to a FAT32 root is not supported")
            self.offset = p.first_root_sector * p.bytes_per_sector
            self.capacity = p.root_dir_sectors * p.bytes_per_sector
        else:
            self.offset = p.cluster_sector(cluster) * p.bytes_per_sector
            self.capacity = p.cluster_size
        self.data = bytearray(fat.dev.pread(self.capacity, self.offset))

    def add(self, entries: bytes, what: str) -> None:
        pos = 0
        while pos < self.capacity and self.data[pos] not in (0, 0xE5):
            pos += DIR_ENTRY_SIZE
        if pos + len(entries) > self.capacity:
            raise FatError(f"{what}: its directory is full")
        self.data[pos : pos + len(entries)] = entries
        self.fat.dev.pwrite(self.data, self.offset)


def _entries(fat: _Fat, name: str, entry: DirEntry) -> bytes:
    if not is_long_name(name):
        return entry.replace(name=short_name_field(name)).pack()
    short = make_alias(name, fat.alias_id)
    fat.alias_id += 1
    entry = entry.replace(name=short_name_field(short))
    return b"".join(lfn_slots(name, lfn_checksum(entry.name))) + entry.pack()


def add_tree(dev: BlockDevice, files: Sequence[tuple[str, bytes]], *, timestamp: int) -> None:
    """Make each file's directories (mkdir), then the file (cp), in the order given.

    `files` are (path, data) with `/`-separated paths from the root.
    """
    fat = _Fat(dev)
    time, date = dos_time_date(timestamp)
    dirs: dict[str, int | None] = {"": None}
    for path, data in files:
        parts = [p for p in path.split("/") if p]
        for depth in range(1, len(parts)):
            sub = "/".join(parts[:depth])
            if sub in dirs:
                continue
            parent = dirs["/".join(parts[: depth - 1])]
            cluster = fat.allocate(1, sub)
            dot = DirEntry(b".          ", ATTR_DIRECTORY, cluster_high=cluster >> 16,
                           cluster_low=cluster & 0xFFFF, time=time, date=date).pack()
            up = parent or 0
            dotdot = DirEntry(b"..         ", ATTR_DIRECTORY, cluster_high=up >> 16,
                              cluster_low=up & 0xFFFF, time=time, date=date).pack()
            fat.write_chain(cluster, (dot + dotdot).ljust(fat.p.cluster_size, b"\0"))
            entry = DirEntry(b"", ATTR_DIRECTORY, cluster_high=cluster >> 16,
                             cluster_low=cluster & 0xFFFF, time=time, date=date)
            _Dir(fat, parent).add(_entries(fat, parts[depth - 1], entry), sub)
            dirs[sub] = cluster
        parent = dirs["/".join(parts[:-1])]
        first = 0
        if data:
            first = fat.allocate(-(-len(data) // fat.p.cluster_size), path)
            fat.write_chain(first, data)
        entry = DirEntry(b"", 0, cluster_high=first >> 16, cluster_low=first & 0xFFFF,
                         time=time, date=date, size=len(data))
        _Dir(fat, parent).add(_entries(fat, parts[-1], entry), path)
    fat.flush()
