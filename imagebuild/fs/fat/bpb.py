"""The FAT boot sector's BIOS parameter block (BPB) and the FAT32 FSInfo sector.

One declaration, used by the writer (`imagebuild.fs.fat.format`) and the reader
(`imagebuild.fs.fat.reader`).  Field names follow 9front's
sys/src/cmd/disk/format.c (struct Dosboot, Dosboot32, Fatinfo) with the
words of Microsoft's FAT specification ("FAT: General Overview of On-Disk
Format", 2000) where format.c is terse:

    offset  Dosboot (FAT12/16)        Dosboot32 (FAT32)
    0x00    magic[3]  jump            (common to both)
    0x03    version[8] OEM name
    0x0B    sectsize[2]               bytes_per_sector
    0x0D    clustsize                 sectors_per_cluster
    0x0E    nresrv[2]                 reserved_sectors
    0x10    nfats                     fat_count
    0x11    rootsize[2]               root_entries (0 on FAT32)
    0x13    volsize[2]                total_sectors16 (0 when >= 65536)
    0x15    mediadesc                 media
    0x16    fatsize[2]                fat_sectors16 (0 on FAT32)
    0x18    trksize[2]                sectors_per_track
    0x1A    nheads[2]                 heads
    0x1C    nhidden[4]                hidden_sectors
    0x20    bigvolsize[4]             total_sectors32
    0x24    driveno                   fatsize[4]    fat_sectors32
    0x25    reserved0                 flags[2]      ext_flags (0x28)
    0x26    bootsig                   ver[2]        fs_version (0x2A)
    0x27    volid[4]                  rootclust[4]  root_cluster (0x2C)
    0x2B    label[11]                 fsinfo[2]     fsinfo_sector (0x30)
    0x36    type[8]                   bootbak[2]    backup_boot_sector (0x32)
    0x3E    (boot code)               reserved0[12] (0x34), driveno (0x40),
                                      reserved1 (0x41), bootsig (0x42),
                                      volid[4] (0x43), label[11] (0x47),
                                      type[8] (0x52), boot code from 0x5A

A boot sector uses the FAT32 layout exactly when fat_sectors16 is 0, the test
9front's 9bootfat (sys/src/boot/pc/fat.c, conffat) and Linux both make.
"""

from __future__ import annotations

from imagebuild.errors import ImageFormatError
from imagebuild.partition.sector0 import MAGIC
from imagebuild.util.layout import Field, Layout
from imagebuild.util.record import Record

BPB_SIZE = 0x3E  # sizeof(Dosboot): where FAT12/16 boot code starts
BPB32_SIZE = 0x5A  # sizeof(Dosboot32): where FAT32 boot code starts
BOOT_SIGNATURE = MAGIC  # Signature_word: the BIOS's 0x55 0xAA, as in sector 0

EXTENDED_BOOT_SIGNATURE = 0x29  # bootsig: volid, label and type follow

# Cluster counts that decide the FAT width (Microsoft's rule, and format.c's:
# it moves on from FAT12 when clusters+2 >= 0xff7 and from FAT16 at 0xfff7).
FAT12_MAX_CLUSTERS = 4084
FAT16_MAX_CLUSTERS = 65524
FAT32_MAX_CLUSTERS = 0xFFFFFF7 - 3

EOF_MARK = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}  # entries >= this end a chain
BAD_CLUSTER = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}

_EXTENDED_BPB = (  # BS_* fields: at 0x24 on FAT12/16, at 0x40 on FAT32
    Field("BS_DrvNum", "drive_number", "B"),
    Field("BS_Reserved1", "reserved1", "B"),
    Field("BS_BootSig", "boot_signature", "B"),
    Field("BS_VolID", "volume_id", "I"),
    Field("BS_VolLab", "label", "11s"),
    Field("BS_FilSysType", "fs_type", "8s"),
)
# The BPB common to all three widths, 0x00..0x24.
BPB = Layout("BPB", "<", [
    Field("BS_jmpBoot", "jump", "3s"),
    Field("BS_OEMName", "oem_name", "8s"),
    Field("BPB_BytsPerSec", "bytes_per_sector", "H"),
    Field("BPB_SecPerClus", "sectors_per_cluster", "B"),
    Field("BPB_RsvdSecCnt", "reserved_sectors", "H"),
    Field("BPB_NumFATs", "fat_count", "B"),
    Field("BPB_RootEntCnt", "root_entries", "H"),
    Field("BPB_TotSec16", "total_sectors16", "H"),
    Field("BPB_Media", "media", "B"),
    Field("BPB_FATSz16", "fat_sectors16", "H"),
    Field("BPB_SecPerTrk", "sectors_per_track", "H"),
    Field("BPB_NumHeads", "heads", "H"),
    Field("BPB_HiddSec", "hidden_sectors", "I"),
    Field("BPB_TotSec32", "total_sectors32", "I"),
])
BPB16_TAIL = Layout("FAT12/16 BPB tail", "<", _EXTENDED_BPB, base=BPB.end)  # FAT12/16, 0x24..0x3E
BPB32_TAIL = Layout("FAT32 BPB tail", "<", [  # FAT32, 0x24..0x5A
    Field("BPB_FATSz32", "fat_sectors32", "I"),
    Field("BPB_ExtFlags", "ext_flags", "H"),
    Field("BPB_FSVer", "fs_version", "H"),
    Field("BPB_RootClus", "root_cluster", "I"),
    Field("BPB_FSInfo", "fsinfo_sector", "H"),
    Field("BPB_BkBootSec", "backup_boot_sector", "H"),
    Field("BPB_Reserved", "reserved0", "12s"),
    *_EXTENDED_BPB,
], base=BPB.end)

assert BPB.end == 0x24 and BPB16_TAIL.end == BPB_SIZE and BPB32_TAIL.end == BPB32_SIZE

VALID_SECTOR_SIZES = (512, 1024, 2048, 4096)


class FatParams(Record):
    """Every field of the BPB, plus the layout they imply.

    `pack()` returns the bytes 0..BPB_SIZE (or 0..BPB32_SIZE when
    `is_fat32`) of a boot sector; `unpack()` reads them back.  Derived
    values (`fat_bits`, `first_data_sector`, `cluster_count`, ...) are
    properties computed the way readers compute them, so a reader and the
    writer cannot disagree.
    """

    FIELDS = (
        "jump", "oem_name", "bytes_per_sector", "sectors_per_cluster", "reserved_sectors",
        "fat_count", "root_entries", "total_sectors16", "media", "fat_sectors16",
        "sectors_per_track", "heads", "hidden_sectors", "total_sectors32", "fat_sectors32",
        "ext_flags", "fs_version", "root_cluster", "fsinfo_sector", "backup_boot_sector",
        "reserved0", "drive_number", "reserved1", "boot_signature", "volume_id", "label",
        "fs_type")
    __slots__ = FIELDS

    jump: bytes
    oem_name: bytes
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    fat_count: int
    root_entries: int
    total_sectors16: int
    media: int
    fat_sectors16: int
    sectors_per_track: int
    heads: int
    hidden_sectors: int
    total_sectors32: int
    # FAT32 only (fat_sectors16 == 0)
    fat_sectors32: int
    ext_flags: int
    fs_version: int
    root_cluster: int
    fsinfo_sector: int
    backup_boot_sector: int
    reserved0: bytes
    # extended BPB (at 0x24 on FAT12/16, at 0x40 on FAT32)
    drive_number: int
    reserved1: int
    boot_signature: int
    volume_id: int
    label: bytes
    fs_type: bytes

    def __init__(
        self,
        jump: bytes = b"\xeb\x3c\x90",
        oem_name: bytes = b"Plan9.00",
        bytes_per_sector: int = 512,
        sectors_per_cluster: int = 1,
        reserved_sectors: int = 1,
        fat_count: int = 2,
        root_entries: int = 0,
        total_sectors16: int = 0,
        media: int = 0xF8,
        fat_sectors16: int = 0,
        sectors_per_track: int = 0,
        heads: int = 0,
        hidden_sectors: int = 0,
        total_sectors32: int = 0,
        fat_sectors32: int = 0,
        ext_flags: int = 0,
        fs_version: int = 0,
        root_cluster: int = 0,
        fsinfo_sector: int = 0,
        backup_boot_sector: int = 0,
        reserved0: bytes = bytes(12),
        drive_number: int = 0x80,
        reserved1: int = 0,
        boot_signature: int = EXTENDED_BOOT_SIGNATURE,
        volume_id: int = 0,
        label: bytes = b"NO NAME    ",
        fs_type: bytes = b"FAT16   ",
    ) -> None:
        self.jump = jump
        self.oem_name = oem_name
        self.bytes_per_sector = bytes_per_sector
        self.sectors_per_cluster = sectors_per_cluster
        self.reserved_sectors = reserved_sectors
        self.fat_count = fat_count
        self.root_entries = root_entries
        self.total_sectors16 = total_sectors16
        self.media = media
        self.fat_sectors16 = fat_sectors16
        self.sectors_per_track = sectors_per_track
        self.heads = heads
        self.hidden_sectors = hidden_sectors
        self.total_sectors32 = total_sectors32
        self.fat_sectors32 = fat_sectors32
        self.ext_flags = ext_flags
        self.fs_version = fs_version
        self.root_cluster = root_cluster
        self.fsinfo_sector = fsinfo_sector
        self.backup_boot_sector = backup_boot_sector
        self.reserved0 = reserved0
        self.drive_number = drive_number
        self.reserved1 = reserved1
        self.boot_signature = boot_signature
        self.volume_id = volume_id
        self.label = label
        self.fs_type = fs_type

    # -- the on-disk record ------------------------------------------------------------------
    def pack(self) -> bytes:
        """Bytes 0..BPB_SIZE (FAT12/16) or 0..BPB32_SIZE (FAT32) of the boot sector.

        Raises struct.error for a field out of its range.
        """
        return BPB.pack(self) + (BPB32_TAIL if self.is_fat32 else BPB16_TAIL).pack(self)

    @classmethod
    def unpack(cls, sector: bytes, source: str = "boot sector") -> FatParams:
        """Parse the BPB fields of `sector` (no validation: see `check()`)."""
        if len(sector) < BPB32_SIZE:
            raise ImageFormatError(f"{source}: {len(sector)} bytes is too short for a BPB")
        head = BPB.unpack(sector)
        tail = BPB16_TAIL if head["fat_sectors16"] else BPB32_TAIL  # as is_fat32
        return cls(**head, **tail.unpack(sector))

    def check(self, device_sectors: int | None = None, source: str = "boot sector") -> None:
        """Raise ImageFormatError unless the fields describe a FAT a reader can walk."""

        def bad(what: str, value: object) -> ImageFormatError:
            return ImageFormatError(f"{source}: {what} {value}")

        if self.bytes_per_sector not in VALID_SECTOR_SIZES:
            raise bad("bytes per sector is", self.bytes_per_sector)
        spc = self.sectors_per_cluster
        if spc == 0 or spc & (spc - 1) or spc > 128:
            raise bad("sectors per cluster is not a power of two up to 128:", spc)
        if self.reserved_sectors < 1:
            raise bad("reserved sectors is", self.reserved_sectors)
        if self.fat_count < 1:
            raise bad("number of FATs is", self.fat_count)
        if self.fat_sectors == 0:
            raise bad("sectors per FAT is", 0)
        if self.total_sectors == 0:
            raise bad("total sectors is", 0)
        if device_sectors is not None and self.total_sectors > device_sectors:
            raise bad(
                f"total sectors exceeds the partition's {device_sectors} sectors:",
                self.total_sectors,
            )
        if self.is_fat32:
            if self.root_entries != 0:
                raise bad("FAT32 root directory entries is", self.root_entries)
        elif self.root_entries == 0:
            raise bad("root directory entries is", 0)
        if self.first_data_sector >= self.total_sectors:
            raise bad("first data sector lies past the volume's end:", self.first_data_sector)
        if self.cluster_count < 1:
            raise bad("number of clusters is", self.cluster_count)
        if not self.is_fat32 and self.cluster_count > FAT16_MAX_CLUSTERS:
            raise bad("FAT16 layout with clusters", self.cluster_count)
        if self.is_fat32 and not 2 <= self.root_cluster < self.cluster_count + 2:
            raise bad("root cluster is", self.root_cluster)

    # -- derived layout ------------------------------------------------------------------------
    @property
    def is_fat32(self) -> bool:
        """Whether the FAT32 layout applies: BPB_FATSz16 is 0 (9bootfat's and Linux's test)."""
        return self.fat_sectors16 == 0

    @property
    def total_sectors(self) -> int:
        """BPB_TotSec16, else BPB_TotSec32."""
        return self.total_sectors16 or self.total_sectors32

    @property
    def fat_sectors(self) -> int:
        """Sectors of one FAT (BPB_FATSz16, or BPB_FATSz32 on FAT32)."""
        return self.fat_sectors32 if self.is_fat32 else self.fat_sectors16

    @property
    def root_dir_sectors(self) -> int:
        """Sectors of the fixed root directory (0 on FAT32: the root is a cluster chain)."""
        return (self.root_entries * 32 + self.bytes_per_sector - 1) // self.bytes_per_sector

    @property
    def first_fat_sector(self) -> int:
        """The first FAT's first sector (after the reserved sectors)."""
        return self.reserved_sectors

    @property
    def first_root_sector(self) -> int:
        """The fixed root directory's first sector (FAT12/16), after the FATs."""
        return self.reserved_sectors + self.fat_count * self.fat_sectors

    @property
    def first_data_sector(self) -> int:
        """Cluster 2's first sector."""
        return self.first_root_sector + self.root_dir_sectors

    @property
    def cluster_count(self) -> int:
        """Data clusters, numbered 2..cluster_count+1 (Microsoft's CountofClusters)."""
        return max(0, self.total_sectors - self.first_data_sector) // max(
            1, self.sectors_per_cluster
        )

    @property
    def fat_bits(self) -> int:
        """The FAT entry width the cluster count implies (12, 16) or 32, as every reader decides it.
        """
        if self.is_fat32:
            return 32
        return 12 if self.cluster_count <= FAT12_MAX_CLUSTERS else 16

    @property
    def cluster_size(self) -> int:
        """Bytes per cluster."""
        return self.sectors_per_cluster * self.bytes_per_sector

    @property
    def fat_entries(self) -> int:
        """Entries the FAT's sectors can hold (format's FAT32 can hold fewer than
        cluster_count + 2; see docs/fat.md)."""
        return self.fat_sectors * self.bytes_per_sector * 8 // self.fat_bits

    def cluster_sector(self, cluster: int) -> int:
        """First sector of a data cluster (>= 2)."""
        return self.first_data_sector + (cluster - 2) * self.sectors_per_cluster


# -- FSInfo (format.c struct Fatinfo) -------------------------------------------------------
FSINFO_LEAD_SIGNATURE = 0x41615252  # FATINFOSIG1, "RRaA"
FSINFO_STRUCT_SIGNATURE = 0x61417272  # FATINFOSIG, "rrAa"
FSINFO_LEAD = Layout("FSInfo lead", "<", [Field("FSI_LeadSig", "lead_signature", "I")])
FSINFO_BODY = Layout("FSInfo body", "<", [  # after FSI_Reserved1 (480 bytes); FSI_TrailSig at 508
    Field("FSI_StrucSig", "struct_signature", "I"),
    Field("FSI_Free_Count", "free_clusters", "I"),
    Field("FSI_Nxt_Free", "next_free", "I"),
    Field("FSI_Reserved2", "reserved2", "12s"),
], base=484)
FSINFO_BODY_OFFSET = FSINFO_BODY.base


class FsInfo(Record):
    """The FAT32 FSInfo sector as format.c fills it: both signatures, the free
    count and the last allocated cluster; the trailing 0xAA550000 signature of
    Microsoft's spec is not written by format (bytes 508..511 stay 0)."""

    FIELDS = ("free_clusters", "next_free", "lead_signature", "struct_signature", "reserved2")
    __slots__ = FIELDS

    free_clusters: int
    next_free: int
    lead_signature: int
    struct_signature: int
    reserved2: bytes

    def __init__(
        self,
        free_clusters: int = 0xFFFFFFFF,
        next_free: int = 0xFFFFFFFF,
        lead_signature: int = FSINFO_LEAD_SIGNATURE,
        struct_signature: int = FSINFO_STRUCT_SIGNATURE,
        reserved2: bytes = bytes(12),
    ) -> None:
        self.free_clusters = free_clusters
        self.next_free = next_free
        self.lead_signature = lead_signature
        self.struct_signature = struct_signature
        self.reserved2 = reserved2

    def pack(self, sector_size: int) -> bytes:
        """The whole FSInfo sector of `sector_size` bytes (the rest zero)."""
        sector = bytearray(sector_size)
        FSINFO_LEAD.pack_into(sector, self)
        FSINFO_BODY.pack_into(sector, self)
        return bytes(sector)

    @classmethod
    def unpack(cls, sector: bytes) -> FsInfo:
        """Read an FSInfo sector; ImageFormatError if shorter than 512 bytes (no other check)."""
        if len(sector) < 512:
            raise ImageFormatError(f"FSInfo sector: {len(sector)} bytes is too short")
        return cls(**FSINFO_LEAD.unpack(sector), **FSINFO_BODY.unpack(sector))
