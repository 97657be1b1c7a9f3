"""Change files in the root of an existing FAT in place, and nothing else.

`imagebuild customize` edits a few boot files of an image it may not have
written (a FAT with subdirectories, another volume serial, another
layout).  Formatting it again would lose all of that, so this module
changes only what is asked: a file whose bytes differ gets them (its old
clusters reused, more taken from the free ones or the surplus freed), a new
file gets directory slots and free clusters; the boot sector, the other
files and directories, the volume serial and label stay as they are.  On
FAT32 the FSInfo free count follows when it was valid.

Names follow format's rules (imagebuild.fs.fat.format: islongname, putname,
mkalias; a new long name takes the first alias NAME~N no entry uses).

Errors: FatError for a name no FAT may hold, a name that is a directory,
no free clusters or directory slots left; ImageFormatError (from the
reader) for a FAT that cannot be walked.  Everything is planned and checked
before the first write.

References: Microsoft, "FAT: General Overview of On-Disk Format" (2000),
sections 4 (FAT entries), 6-7 (directory entries, long names), 5 (FSInfo).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from imagebuild.disk.device import BlockDevice
from imagebuild.fs.fat.bpb import (
    EOF_MARK,
    FSINFO_BODY,
    FSINFO_LEAD_SIGNATURE,
    FSINFO_STRUCT_SIGNATURE,
    FsInfo,
)
from imagebuild.fs.fat.dirent import (
    DIR_ENTRY_SIZE,
    FREE_ENTRY,
    DirEntry,
    dos_time_date,
    is_long_name,
    lfn_checksum,
    lfn_slots,
    make_alias,
    short_name_field,
)
from imagebuild.fs.fat.format import FatFile, check_name, file_attributes
from imagebuild.fs.fat.layout import FatError
from imagebuild.fs.fat.reader import DirRecord, FatVolume, scan_directory

MIRRORING_OFF = 0x80  # BPB_ExtFlags bit 7: only the active FAT (bits 0-3) is in use


class _Fat:
    """The first FAT in memory, with its entries read and set by cluster number."""

    def __init__(self, volume: FatVolume) -> None:
        self.bits = volume.fat_bits
        self.old = volume.fat
        self.table = bytearray(volume.fat)
        self.max_cluster = volume.max_cluster
        self.freed = self.taken = 0

    def get(self, cluster: int) -> int:
        if self.bits == 12:
            offset = cluster * 3 // 2
            value = self.table[offset] | self.table[offset + 1] << 8
            return value >> 4 if cluster & 1 else value & 0xFFF
        if self.bits == 16:
            return int(struct.unpack_from("<H", self.table, cluster * 2)[0])
        return int(struct.unpack_from("<I", self.table, cluster * 4)[0]) & 0x0FFFFFFF

    def set(self, cluster: int, value: int) -> None:
        if self.bits == 12:
            offset = cluster * 3 // 2
            if cluster & 1:
                self.table[offset] = (self.table[offset] & 0x0F) | (value << 4 & 0xF0)
                self.table[offset + 1] = value >> 4 & 0xFF
            else:
                self.table[offset] = value & 0xFF
                self.table[offset + 1] = (self.table[offset + 1] & 0xF0) | (value >> 8 & 0x0F)
        elif self.bits == 16:
            struct.pack_into("<H", self.table, cluster * 2, value)
        else:  # the top four bits of a FAT32 entry are reserved: keep them
            old = int(struct.unpack_from("<I", self.table, cluster * 4)[0])
            struct.pack_into("<I", self.table, cluster * 4, (old & 0xF0000000) | value)

    def allocate(self, count: int, what: str) -> list[int]:
        """`count` free clusters, lowest first (not linked yet)."""
        found: list[int] = []
        cluster = 2
        while len(found) < count and cluster <= self.max_cluster:
            if self.get(cluster) == 0:
                found.append(cluster)
            cluster += 1
        if len(found) < count:
            raise FatError(f"{what}: the FAT has {len(found)} free clusters, {count} needed")
        for c in found:
            self.set(c, EOF_MARK[self.bits] | 7)  # taken, so the next search skips it
        self.taken += count
        return found

    def link(self, chain: Sequence[int]) -> None:
        """Make `chain` one cluster chain ending in an end-of-chain mark."""
        for cluster, following in zip(chain, [*chain[1:], EOF_MARK[self.bits] | 7], strict=True):
            self.set(cluster, following)

    def free(self, clusters: Sequence[int]) -> None:
        for cluster in clusters:
            self.set(cluster, 0)
        self.freed += len(clusters)


class _Root:
    """The root directory's slots: their device offsets and current bytes."""

    def __init__(self, volume: FatVolume, fat: _Fat) -> None:
        p = volume.params
        self.volume, self.fat = volume, fat
        self.fixed = not p.is_fat32
        if self.fixed:
            base = p.first_root_sector * p.bytes_per_sector
            self.offsets = [base + i * DIR_ENTRY_SIZE for i in range(p.root_entries)]
            self.clusters: list[int] = []
        else:
            self.clusters = volume.chain(p.root_cluster, "root directory")
            self.offsets = [o for c in self.clusters for o in self._cluster_slots(c)]
        self.raw = bytearray(b"".join(volume.dev.pread(DIR_ENTRY_SIZE, o) for o in self.offsets))
        self.dirty: set[int] = set()

    def _cluster_slots(self, cluster: int) -> list[int]:
        p = self.volume.params
        base = p.cluster_sector(cluster) * p.bytes_per_sector
        return [base + i * DIR_ENTRY_SIZE for i in range(p.cluster_size // DIR_ENTRY_SIZE)]

    def put(self, index: int, slot: bytes) -> None:
        self.raw[index * DIR_ENTRY_SIZE : (index + 1) * DIR_ENTRY_SIZE] = slot
        self.dirty.add(index)

    def free_run(self, count: int, what: str) -> tuple[int, bool]:
        """(first index of `count` consecutive unused slots, whether they lie past the old
        end-of-directory mark); a full FAT32 root grows by a cluster."""
        slots = len(self.raw) // DIR_ENTRY_SIZE
        run = 0
        for index in range(slots):
            first = self.raw[index * DIR_ENTRY_SIZE]
            if first == 0:  # this slot and all after it are unused
                if slots - index >= count:
                    return index, True
                break
            run = run + 1 if first == FREE_ENTRY else 0
            if run == count:
                return index - count + 1, False
        if self.fixed:
            raise FatError(f"{what}: the root directory is full ({slots} entries)")
        cluster = self.fat.allocate(1, what)[0]
        self.fat.link([*self.clusters, cluster])
        self.clusters.append(cluster)
        self.offsets += self._cluster_slots(cluster)
        self.raw[slots * DIR_ENTRY_SIZE :] = bytes(self.volume.params.cluster_size)
        self.dirty.update(range(slots, len(self.raw) // DIR_ENTRY_SIZE))
        return self.free_run(count, what)


def update_root_files(dev: BlockDevice, files: Sequence[FatFile], *, timestamp: int) -> None:
    """Make each of `files` a root file of the FAT on `dev` holding its data; change nothing else.

    A file is matched by name as readers match it (long or 8.3 name, any
    case); one whose bytes are already those is not touched.  Changed and
    new files are dated `timestamp` (Unix seconds, UTC).  Raises FatError or
    ImageFormatError (see the module docstring) before writing anything.
    """
    volume = FatVolume(dev)
    p = volume.params
    fat = _Fat(volume)
    root = _Root(volume, fat)
    records = list(scan_directory(bytes(root.raw)))
    time, date = dos_time_date(timestamp)
    cluster_size = p.cluster_size
    data_writes: list[tuple[list[int], bytes]] = []
    for file in files:
        folded = file.name.casefold()
        record = next((r for r in records if folded in (
            (r.long_name or "").casefold(), r.entry.display_name().casefold())), None)
        need = -(-len(file.data) // cluster_size)
        if record is not None:
            entry = record.entry
            if entry.attributes & 0x18:  # a directory or the volume label
                raise FatError(f"file {file.name!r}: the FAT has a directory of that name")
            first = entry.first_cluster if p.is_fat32 else entry.cluster_low
            old = volume.chain(first, f"file {file.name!r}") if first else []
            if entry.size == len(file.data) and _read(volume, old, entry.size) == file.data:
                continue
            chain = old[:need]
            if need > len(old):
                chain += fat.allocate(need - len(old), f"file {file.name!r}")
            fat.free(old[need:])
            if chain:
                fat.link(chain)
            first = chain[0] if chain else 0
            entry = entry.replace(cluster_low=first & 0xFFFF, size=len(file.data), time=time,
                                   date=date)
            if p.is_fat32:  # on FAT12/16 the high word is not ours to change
                entry = entry.replace(cluster_high=first >> 16)
            root.put(record.slot, entry.pack())
        else:
            check_name(file.name)
            chain = fat.allocate(need, f"file {file.name!r}") if need else []
            if chain:
                fat.link(chain)
            _add_entry(root, records, file, chain[0] if chain else 0, time, date)
            records = list(scan_directory(bytes(root.raw)))
        data_writes.append((chain, file.data))
    # nothing was written so far: now the data, the directory, the FATs, FSInfo
    for chain, data in data_writes:
        _write_chain(volume, chain, data)
    for index in sorted(root.dirty):
        dev.pwrite(root.raw[index * DIR_ENTRY_SIZE : (index + 1) * DIR_ENTRY_SIZE],
                   root.offsets[index])
    _write_fats(volume, fat)
    _update_fsinfo(volume, fat)


def _read(volume: FatVolume, chain: list[int], size: int) -> bytes:
    p = volume.params
    data = b"".join(volume.dev.pread(p.cluster_size, p.cluster_sector(c) * p.bytes_per_sector)
                    for c in chain)
    return data[:size]


def _add_entry(root: _Root, records: list[DirRecord], file: FatFile, first: int, time: int,
               date: int) -> None:
    """addrname() for a new file: long-name slots when islongname(), an unused alias."""
    name = file.name
    taken = {r.entry.name for r in records}
    folded = {(r.long_name or r.entry.display_name()).casefold() for r in records}
    if name.casefold() in folded:
        raise FatError(f"file {name!r}: name clashes with an entry of the root")
    slots: list[bytes] = []
    if is_long_name(name):
        alias_id = 1
        while short_name_field(make_alias(name, alias_id)) in taken:
            alias_id += 1
        short = make_alias(name, alias_id)
        field11 = short_name_field(short)
        slots = lfn_slots(name, lfn_checksum(field11))
    else:
        short, field11 = name, short_name_field(name)
        if field11 in taken:
            raise FatError(f"file {name!r}: its 8.3 name clashes with an entry of the root")
    entry = DirEntry(name=field11, attributes=file_attributes(short),
                     cluster_high=first >> 16, time=time, date=date,
                     cluster_low=first & 0xFFFF, size=len(file.data))
    index, past_end = root.free_run(len(slots) + 1, f"file {name!r}")
    for i, slot in enumerate([*slots, entry.pack()]):
        root.put(index + i, slot)
    end = index + len(slots) + 1
    if past_end and end < len(root.raw) // DIR_ENTRY_SIZE and root.raw[end * DIR_ENTRY_SIZE]:
        root.put(end, bytes(DIR_ENTRY_SIZE))  # the end-of-directory mark after the new entry


def _write_chain(volume: FatVolume, chain: list[int], data: bytes) -> None:
    """The data over the clusters of `chain`, the last one zero-padded, in runs."""
    p = volume.params
    size = p.cluster_size
    padded = data + bytes(-len(data) % size)
    i = 0
    while i < len(chain):
        j = i + 1
        while j < len(chain) and chain[j] == chain[j - 1] + 1:
            j += 1
        volume.dev.pwrite(padded[i * size : j * size],
                          p.cluster_sector(chain[i]) * p.bytes_per_sector)
        i = j


def _write_fats(volume: FatVolume, fat: _Fat) -> None:
    """The changed sectors of the FAT, in every copy in use."""
    p = volume.params
    ss = p.bytes_per_sector
    copies = range(p.fat_count)
    if p.is_fat32 and p.ext_flags & MIRRORING_OFF:
        copies = range(p.ext_flags & 0x0F, (p.ext_flags & 0x0F) + 1)
    for sector in range(len(fat.table) // ss):
        new = fat.table[sector * ss : (sector + 1) * ss]
        if new == fat.old[sector * ss : (sector + 1) * ss]:
            continue
        for copy in copies:
            volume.dev.pwrite(new, (p.first_fat_sector + copy * p.fat_sectors + sector) * ss)


def _update_fsinfo(volume: FatVolume, fat: _Fat) -> None:
    """FAT32: keep FSInfo's free count right when it was a count (not 0xFFFFFFFF)."""
    p = volume.params
    if not p.is_fat32 or not 0 < p.fsinfo_sector < p.reserved_sectors:
        return
    offset = p.fsinfo_sector * p.bytes_per_sector
    sector = volume.dev.pread(p.bytes_per_sector, offset)
    info = FsInfo.unpack(sector)
    if (info.lead_signature, info.struct_signature) != (
            FSINFO_LEAD_SIGNATURE, FSINFO_STRUCT_SIGNATURE):
        return
    if info.free_clusters == 0xFFFFFFFF or info.free_clusters > p.cluster_count:
        return
    free = info.free_clusters + fat.freed - fat.taken
    if free != info.free_clusters:
        at = offset + FSINFO_BODY.offsets()["FSI_Free_Count"]
        volume.dev.pwrite(struct.pack("<I", free & 0xFFFFFFFF), at)
