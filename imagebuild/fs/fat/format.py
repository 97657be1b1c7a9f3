"""disk/format: a FAT12/16/32 file system with a boot program and files in its root.

Mirrors 9front's sys/src/cmd/disk/format.c as the dist mkfile runs it over a
disk/partfs partition (libdisk type Tsd):

    disk/format -b /386/pbs -d -r 2 $d/9fat 9bootfat plan9.ini 9pc64   (amd64.qcow2)
    disk/format -d -r 2 $d/9fat $fatfiles                              (generic)
    disk/format -d $d/dos $fatfiles                                    (pi, arm64, ...)
    disk/format -b /386/pbs -xd -t hard $d/esp                         (hybrid iso)

Every choice is format's: the FAT width, cluster size, root directory size,
reserved sectors, media byte, geometry, label, and where each file's clusters
go.  Where format.c has quirks that change the bytes, we keep them and say so:

* format runs its whole layout twice (a check pass, then the commit pass)
  and two of its globals carry over: on FAT32 the reserved-sector count is
  incremented once per pass (`-r 2` gives 4 reserved sectors, FSInfo in
  sector 3), and the alias counter of long names keeps counting (with one
  long name in the list its alias is NAME~1, not NAME~0).  `Pass` carries
  both.
* Bytes format does not write keep what the device held: the boot sector is
  read, its first 0x3E bytes cleared, the boot program copied in, the BPB
  filled; on FAT32 the volume id and some reserved bytes therefore come from
  the boot program.
* The FAT32 free-cluster count in FSInfo is format's (it counts the root
  directory's clusters twice), and no backup boot sector is written.

Where format would write a broken file system or its clock, we differ, on
purpose (docs/fat.md lists each, tests cover each):

* Time stamps come from `timestamp` (UTC), never the clock; the FAT12/16
  volume id is 0 in format already.
* Bad input that format accepts or overflows on raises FatError before a
  byte is written: a boot program too small or jumping into the BPB, names
  no FAT may hold, duplicate names, a root directory overflowed by long-name
  slots, a partition too small for a root directory or one cluster.
* A first cluster above 0xFFFF gets its high half (format writes only the
  low 16 bits).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from imagebuild.disk.device import BlockDevice
from imagebuild.fs.fat.bpb import (
    BOOT_SIGNATURE,
    BPB32_SIZE,
    BPB_SIZE,
    EXTENDED_BOOT_SIGNATURE,
    FatParams,
    FsInfo,
)
from imagebuild.fs.fat.dirent import (
    ATTR_SYSTEM,
    DIR_ENTRY_SIZE,
    FORBIDDEN_CHARS,
    MAX_LONG_NAME,
    DirEntry,
    dos_time_date,
    is_long_name,
    lfn_checksum,
    lfn_slots,
    make_alias,
    short_name_field,
)
from imagebuild.fs.fat.layout import (
    DISK_TYPES,
    FAT_COUNT,
    HARD,
    ROOT_DIR_FRACTION,
    DiskType,
    FatError,
    Layout,
    Pass,
    default_cluster_sectors,
    fit_layout,
)
from imagebuild.fs.fat.pbs import DEFAULT_PBS
from imagebuild.fs.fat.reader import FatEntry, FatPathError, FatVolume
from imagebuild.util.progress import Progress
from imagebuild.util.record import Record

__all__ = [
    "DISK_TYPES",
    "DiskType",
    "FatEntry",
    "FatError",
    "FatFile",
    "FatParams",
    "FatPathError",
    "FatVolume",
    "default_cluster_sectors",
    "format_fat",
    "plan_layout",
]

OEM_NAME = b"Plan9.00"  # format.c: memmove(b->version, "Plan9.00", ...)
DEFAULT_JUMP = b"\xeb\x3c\x90"  # format.c: b->magic, before a boot program replaces it
DEFAULT_LABEL = b"CYLINDRICAL"  # format.c main(): label before -l
LABEL_SIZE = 11
HARD_DISK_DRIVE = 0x80  # getdriveno(): partfs paths name no sdC0/sdC1/sdD0/sdD1
MAX_FILE_SIZE = 0xFFFFFFFF
WRITE_CHUNK = 4 << 20


class FatFile(Record):
    """A file for the root directory: its FAT name and contents."""

    FIELDS = ("name", "data")
    __slots__ = FIELDS

    name: str
    data: bytes

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data


class _Directory:
    """The root directory as format builds it, with the clusters it hands out: `capacity`
    entries, `clusters` (format's count, 2 reserved included) of `cluster_bytes` each."""

    __slots__ = ("capacity", "cluster_bytes", "clusters", "entries", "fat_bits", "last_cluster",
                 "names", "runs")

    def __init__(self, capacity: int, cluster_bytes: int, clusters: int, fat_bits: int) -> None:
        self.capacity = capacity
        self.cluster_bytes = cluster_bytes
        self.clusters = clusters
        self.fat_bits = fat_bits
        self.entries = bytearray()
        self.runs: list[tuple[int, int]] = []  # (first cluster, count)
        self.last_cluster = 1  # format.c fatlast
        self.names: dict[tuple[str, str], str] = {}

    def allocate(self, count: int, what: str) -> int:
        """clustalloc(Sof), clustalloc(0)..., clustalloc(Eof): `count` consecutive clusters."""
        first = self.last_cluster + 1
        self.last_cluster += count
        if self.last_cluster >= self.clusters:
            raise FatError(
                f"{what}: data does not fit on disk (needs cluster {self.last_cluster}, "
                f"the partition has clusters 2..{self.clusters - 1})"
            )
        self.runs.append((first, count))
        return first

    def claim(self, kind: str, name: str, what: str) -> None:
        """Refuse a second file a reader could not tell apart: the same name up to case
        (kind "name") or the same 11-byte 8.3 name (kind "short")."""
        key = (kind, name.casefold())
        if key in self.names:
            raise FatError(f"{what}: name clashes with {self.names[key]} in the root")
        self.names[key] = what


def check_name(name: str) -> None:
    """FatError unless `name` can be a FAT file name that reads back as itself (docs/fat.md)."""
    what = f"file {name!r}"
    if not name or name in (".", ".."):
        raise FatError(f"{what}: not a usable FAT file name")
    if "/" in name:
        raise FatError(f"{what}: format writes only the root directory; give a bare name")
    bad = sorted({c for c in name if ord(c) < 0x20 or c == "\x7f" or c in FORBIDDEN_CHARS})
    if bad:
        raise FatError(f"{what}: FAT names cannot hold {''.join(bad)!r}")
    if any(ord(c) > 0xFFFF for c in name):
        raise FatError(f"{what}: characters beyond U+FFFF do not fit a long-name slot")
    if len(name) > MAX_LONG_NAME:
        raise FatError(f"{what}: longer than {MAX_LONG_NAME} characters")
    if not is_long_name(name) and name.startswith("."):
        raise FatError(f"{what}: an 8.3 name needs characters before its dot")
    if not is_long_name(name) and name.endswith("."):
        raise FatError(
            f"{what}: an 8.3 name cannot end in a dot (it would read back as {name[:-1]!r})"
        )


def _add_file(
    state: Pass, root: _Directory, file: FatFile, first_cluster: int, time_date: tuple[int, int]
) -> None:
    """addrname(): long-name slots when islongname(), the 8.3 entry, attributes, times."""
    name = file.name
    slots: list[bytes] = []
    if is_long_name(name):
        short = make_alias(name, state.alias_id)
        state.alias_id += 1
        field11 = short_name_field(short)
        slots = lfn_slots(name, lfn_checksum(field11))
    else:
        short = name
        field11 = short_name_field(short)
    root.claim("name", name, f"file {name!r}")
    root.claim("short", field11.decode("latin-1"), f"file {name!r} (8.3 name {short.upper()!r})")
    if len(root.entries) // DIR_ENTRY_SIZE + len(slots) + 1 > root.capacity:
        raise FatError(
            f"file {name!r}: too many files in root (it holds {root.capacity} entries)"
        )
    time, date = time_date
    entry = DirEntry(
        name=field11,
        attributes=file_attributes(short),
        cluster_high=first_cluster >> 16,
        time=time,
        date=date,
        cluster_low=first_cluster & 0xFFFF,
        size=len(file.data),
    )
    for slot in slots:
        root.entries += slot
    root.entries += entry.pack()


def file_attributes(short: str) -> int:
    """addrname(): DSYSTEM for 9load and 9boot* (by the 8.3 name), else no attribute."""
    lowered = short.lower()
    return ATTR_SYSTEM if lowered == "9load" or lowered.startswith("9boot") else 0


class FatPlan(Record):
    """Everything format_fat writes, decided before it writes anything."""

    FIELDS = ("params", "layout", "fat", "root", "files", "fsinfo")
    __slots__ = FIELDS

    params: FatParams
    layout: Layout
    fat: bytes  # one copy of the FAT
    root: bytes  # the root directory's sectors
    files: list[tuple[FatFile, int]]  # (file, first cluster), in the order format writes them
    fsinfo: FsInfo | None

    def __init__(
        self,
        params: FatParams,
        layout: Layout,
        fat: bytes,
        root: bytes,
        files: list[tuple[FatFile, int]],
        fsinfo: FsInfo | None,
    ) -> None:
        self.params = params
        self.layout = layout
        self.fat = fat
        self.root = root
        self.files = files
        self.fsinfo = fsinfo


def plan_layout(
    secs: int,
    sector_size: int,
    *,
    sectors_per_track: int,
    heads: int,
    hidden_sectors: int,
    files: Sequence[FatFile] = (),
    reserved: int = 1,
    disk_type: str | None = None,
    fat_bits: int | None = None,
    label: str | bytes | None = None,
    cluster_sectors: int | None = None,
    timestamp: int = 0,
) -> FatPlan:
    """format.c dosfs() without the I/O: the commit pass, with what the check pass left it.

    Raises FatError for every refusal, judged on the layout that is written.
    """
    type_name = HARD if disk_type is None else disk_type
    if type_name not in DISK_TYPES:
        raise FatError(f"disk type {type_name!r}: unknown (known: {', '.join(DISK_TYPES)})")
    dtype = DISK_TYPES[type_name]
    if dtype.name == HARD:
        # format.c: t->sectors = disk->s, t->heads = disk->h, t->cluster = defcluster(secs)
        dtype = DiskType(HARD, sector_size, sectors_per_track, heads, 0, dtype.media,
                         default_cluster_sectors(secs))
    if dtype.sectors == 0:
        raise FatError(f"cannot format fat with type {type_name}: geometry unknown")
    cluster = dtype.cluster if cluster_sectors is None else cluster_sectors
    if cluster < 1 or cluster > 128 or cluster & (cluster - 1):
        raise FatError(f"cluster size {cluster}: must be a power of two from 1 to 128 sectors")
    if fat_bits not in (None, 12, 16, 32):
        raise FatError(f"FAT width {fat_bits}: must be 12, 16 or 32")
    if reserved < 1:
        raise FatError(f"reserved sectors {reserved}: must be at least 1 (the boot sector)")
    if label is None:
        label_bytes = DEFAULT_LABEL
    else:
        # format.c -l: the first 11 bytes, blank padded, case kept
        raw = label.encode() if isinstance(label, str) else bytes(label)
        if not raw.isascii() or any(c < 0x20 for c in raw):
            raise FatError(f"volume label {label!r}: must be printable ASCII")
        label_bytes = raw[:LABEL_SIZE].ljust(LABEL_SIZE, b" ")
    if secs >= 1 << 32 or hidden_sectors >= 1 << 32:
        raise FatError(
            f"partition of {secs} sectors at sector {hidden_sectors}: a FAT counts "
            f"sectors in 32 bits"
        )
    if secs < ROOT_DIR_FRACTION:
        raise FatError(
            f"partition of {secs} sectors is too small: format gives a root directory "
            f"one sector per {ROOT_DIR_FRACTION}"
        )
    for file in files:
        check_name(file.name)
        if len(file.data) > MAX_FILE_SIZE:
            raise FatError(f"file {file.name!r} too big ({len(file.data)} bytes)")

    if fat_bits is not None:
        chosen = fit_layout(Pass(reserved), secs, sector_size, cluster, 12)
        if chosen.fat_bits != fat_bits:
            raise FatError(
                f"FAT width {fat_bits}: format's rules give this {secs}-sector partition "
                f"FAT{chosen.fat_bits} ({chosen.clusters - 2} clusters of {cluster} sectors)"
            )
    state = Pass(reserved=reserved)
    # format's check pass, for what it leaves the commit pass: FAT32 grows the reserved
    # count, long names go on numbering aliases.  Its layout is not judged: where
    # settle_width gives the passes different layouts, files must fit the one written.
    fit_layout(state, secs, sector_size, cluster, 12)
    state.alias_id += sum(1 for file in files if is_long_name(file.name))
    return _plan_pass(state, secs, sector_size, dtype, cluster, label_bytes,
                      hidden_sectors, files, timestamp)


def _plan_pass(
    state: Pass,
    secs: int,
    sector_size: int,
    dtype: DiskType,
    cluster: int,
    label: bytes,
    hidden_sectors: int,
    files: Sequence[FatFile],
    timestamp: int,
) -> FatPlan:
    layout = fit_layout(state, secs, sector_size, cluster, 12)
    if layout.clusters - 2 < 1:
        raise FatError(f"partition of {secs} sectors is too small for one {cluster}-sector cluster")
    is32 = layout.fat_bits == 32
    params = FatParams(
        jump=DEFAULT_JUMP,
        oem_name=OEM_NAME,
        bytes_per_sector=sector_size,
        sectors_per_cluster=cluster,
        reserved_sectors=layout.reserved_sectors,
        fat_count=FAT_COUNT,
        root_entries=0 if is32 else layout.root_entries,
        total_sectors16=0 if layout.volume_sectors >= 1 << 16 else layout.volume_sectors,
        media=dtype.media,
        fat_sectors16=0 if is32 else layout.fat_sectors,
        sectors_per_track=dtype.sectors,
        heads=dtype.heads,
        hidden_sectors=hidden_sectors,
        # format writes bigvolsize even when volsize holds the count
        total_sectors32=layout.volume_sectors,
        fat_sectors32=layout.fat_sectors if is32 else 0,
        root_cluster=2 if is32 else 0,
        fsinfo_sector=layout.reserved_sectors - 1 if is32 else 0,
        backup_boot_sector=0,
        drive_number=HARD_DISK_DRIVE if dtype.media == 0xF8 else 0,
        boot_signature=EXTENDED_BOOT_SIGNATURE,
        volume_id=0,
        label=label,
        fs_type=f"FAT{layout.fat_bits:<5d}".encode(),  # sprint(r, "FAT%d    ", fatbits)
    )
    root = _Directory(
        capacity=layout.root_sectors * sector_size // DIR_ENTRY_SIZE,
        cluster_bytes=cluster * sector_size,
        clusters=layout.clusters,
        fat_bits=layout.fat_bits,
    )
    if is32:
        root.allocate(layout.root_sectors // cluster, "root directory")
    time_date = dos_time_date(timestamp)
    placed = []
    for file in files:
        size = len(file.data)
        first = 0
        if size:
            count = (size + root.cluster_bytes - 1) // root.cluster_bytes
            first = root.allocate(count, f"file {file.name!r} ({size} bytes)")
        _add_file(state, root, file, first, time_date)
        placed.append((file, first))
    fsinfo = None
    if is32:
        # format.c: freeclust = clusters - fatlast, nextfree = fatlast
        fsinfo = FsInfo(
            free_clusters=(layout.clusters - root.last_cluster) & 0xFFFFFFFF,
            next_free=root.last_cluster,
        )
    fat = _encode_fat(layout, dtype.media, sector_size, root.runs)
    root_bytes = bytes(root.entries).ljust(layout.root_sectors * sector_size, b"\0")
    return FatPlan(params, layout, fat, root_bytes, placed, fsinfo)


def _encode_fat(
    layout: Layout, media: int, sector_size: int, runs: list[tuple[int, int]]
) -> bytes:
    """The in-memory fat of dosfs() after every clustalloc()."""
    fat = bytearray(layout.fat_sectors * sector_size)
    bits = layout.fat_bits
    # fat[0] = media, then 0xff up to the second entry's end
    head = bytes([media]) + b"\xff" * {12: 2, 16: 3, 32: 7}[bits]
    fat[: len(head)] = head
    eof = (1 << bits) - 1 if bits != 32 else 0x0FFFFFFF
    for first, count in runs:
        chain = [*range(first + 1, first + count), eof]
        if bits == 12:
            for cluster, value in enumerate(chain, first):
                offset = cluster * 3 // 2
                if cluster & 1:
                    fat[offset] = (fat[offset] & 0x0F) | (value << 4 & 0xF0)
                    fat[offset + 1] = value >> 4
                else:
                    fat[offset] = value & 0xFF
                    fat[offset + 1] = (fat[offset + 1] & 0xF0) | (value >> 8 & 0x0F)
        else:
            width = bits // 8
            struct.pack_into(f"<{count}{'H' if bits == 16 else 'I'}", fat, first * width, *chain)
    return bytes(fat)


def _boot_sector(
    old: bytes, params: FatParams | None, program: bytes | None
) -> tuple[bytes, FatParams | None]:
    """dosfs()'s boot sector: the old sector, BPB area cleared (-d), jump and OEM name,
    the boot program's jump and bytes from 0x3E on, the BPB, and 0x55AA."""
    sector = bytearray(old)
    if params is not None:
        sector[:BPB_SIZE] = bytes(BPB_SIZE)
    sector[0:3] = DEFAULT_JUMP
    sector[3:11] = OEM_NAME
    if program is not None:
        sector[0:3] = program[0:3]
        sector[BPB_SIZE : len(program)] = program[BPB_SIZE:]
    if params is not None:
        params = params.replace(jump=bytes(sector[0:3]))
        if params.is_fat32:
            # Not written by format: what the boot program (or the old sector) has there.
            params = params.replace(reserved0=bytes(sector[0x34:0x40]), reserved1=sector[0x41],
                                     volume_id=int.from_bytes(sector[0x43:0x47], "little"))
        packed = params.pack()
        sector[: len(packed)] = packed
    sector[-2:] = BOOT_SIGNATURE
    return bytes(sector), params


def _check_program(program: bytes, source: str, sector_size: int, bpb_end: int) -> None:
    """What format checks of a -b file (too large) and what it only warns about or
    lets pass (too small, no short jump, code inside the BPB): all errors here."""
    if len(program) > sector_size - 2:
        raise FatError(
            f"boot program {source}: boot block too large ({len(program)} bytes; at most "
            f"{sector_size - 2} fit before the boot signature)"
        )
    if len(program) < BPB_SIZE + 1:
        raise FatError(
            f"boot program {source}: pbs too small ({len(program)} bytes; its code starts "
            f"after the BPB at {BPB_SIZE:#x})"
        )
    if program[0] != 0xEB:
        raise FatError(
            f"boot program {source}: doesn't start with a short jump (first byte "
            f"{program[0]:#04x}, want 0xeb)"
        )
    target = program[1] + 2
    if target < bpb_end:
        raise FatError(
            f"boot program {source}: jumps to {target:#x}, inside the BPB that ends at "
            f"{bpb_end:#x}"
        )


def format_fat(
    dev: BlockDevice,
    files: Sequence[FatFile] = (),
    *,
    pbs: bytes | None = None,
    pbs_source: str = "<default>",
    reserved: int = 1,
    disk_type: str | None = None,
    fat_bits: int | None = None,
    label: str | bytes | None = None,
    cluster_sectors: int | None = None,
    dos: bool = True,
    xflag: bool = False,
    timestamp: int = 0,
    progress: Progress | None = None,
) -> FatParams:
    """disk/format [-b pbs] [-d] [-x] [-r reserved] [-t type] [-c cluster] [-l label] dev files.

    `dos` is -d (make the file system), `pbs` is -b (else -d installs our
    DEFAULT_PBS), `fat_bits` is not a format option: it asserts the width
    format's rules choose.  `timestamp` (Unix time, UTC) dates every entry.
    `progress`, if given, is called after each write as progress("format", bytes so far, None)
    (imagebuild.util.progress).
    Returns the BPB now in the boot sector.  Nothing is written unless the
    whole file system fits.
    """
    sector_size = dev.sector_size
    if dev.secs < 1:
        raise FatError(f"{dev.name}: an empty partition cannot hold a FAT")
    old_boot = dev.read_sectors(0)
    _sanity_check(dev, dos=dos, reserved=reserved, xflag=xflag)

    plan = None
    if dos:
        geometry = dev.geometry()
        plan = plan_layout(
            dev.secs, sector_size,
            sectors_per_track=geometry.sectors, heads=geometry.heads,
            hidden_sectors=dev.offset, files=files, reserved=reserved, disk_type=disk_type,
            fat_bits=fat_bits, label=label, cluster_sectors=cluster_sectors,
            timestamp=timestamp,
        )
    program = None
    if pbs is not None or dos:  # format.c: writepbs is set by -b and by -d
        program = DEFAULT_PBS if pbs is None else pbs
        bpb_end = BPB32_SIZE if plan is not None and plan.params.is_fat32 else BPB_SIZE
        _check_program(program, pbs_source if pbs is not None else "<default>", sector_size,
                       bpb_end)
    if program is None:
        return FatParams.unpack(old_boot, f"{dev.name} boot sector")  # format does nothing

    boot, params = _boot_sector(old_boot, plan.params if plan else None, program)

    done = 0

    def write(data: bytes | bytearray, sector: int) -> None:
        nonlocal done
        dev.pwrite(data, sector * sector_size)
        done += len(data)
        if progress is not None:
            progress("format", done, None)

    write(boot, 0)
    if plan is None:
        return FatParams.unpack(boot, f"{dev.name} boot sector")
    assert params is not None
    _write_files(plan, write)
    if plan.fsinfo is not None:
        write(plan.fsinfo.pack(sector_size), plan.layout.reserved_sectors - 1)
    write(plan.fat + plan.fat + plan.root, plan.layout.reserved_sectors)
    return params


def _write_files(plan: FatPlan, write: Callable[[bytes | bytearray, int], None]) -> None:
    """The files, each padded to whole clusters, back to back from the files area on."""
    cluster_bytes = plan.params.cluster_size
    sector_size = plan.params.bytes_per_sector
    start = plan.layout.files_start
    run = bytearray()
    for file, _first in plan.files:
        if not file.data:
            continue
        run += file.data
        run += bytes(-len(file.data) % cluster_bytes)
        if len(run) >= WRITE_CHUNK:
            write(run, start)
            start += len(run) // sector_size
            run = bytearray()
    if run:
        write(run, start)


def _sanity_check(dev: BlockDevice, *, dos: bool, reserved: int, xflag: bool) -> None:
    """sanitycheck(): refuse to clobber a Plan 9 partition table or a whole disk, unless -x."""
    if xflag:
        return
    if dos and reserved < 2 and dev.secs > 1 and dev.read_sectors(1)[:5] == b"part ":
        raise FatError(
            f"{dev.name}: there's a plan9 partition table in sector 1 and reserved is "
            f"{reserved}; give reserved=2 (-r 2) or xflag (-x)"
        )
    if dev.offset == 0:
        raise FatError(
            f"{dev.name}: formatting the whole disk rather than a partition is likely a "
            f"mistake; give xflag (-x) to do it anyway"
        )
