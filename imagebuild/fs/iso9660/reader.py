"""Read an ISO 9660 image: volume descriptors, El Torito catalog, the Plan 9 and Joliet trees.

Follows ECMA-119 and El Torito; the Plan 9 names, owners and modes come from
mk9660's system-use field (sysuse.py), as 9front's 9660srv reads them
(cdrdwr.c parsedir).  Without that field a name is the identifier in lower
case without its `;1` version (isostring()).  Every length and block number
read from the image is checked against the image's size before use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imagebuild.fs.iso9660 import eltorito
from imagebuild.fs.iso9660.dirrec import DirectoryRecord, iter_records, parse_record_date
from imagebuild.fs.iso9660.pathtable import PathTableRecord, unpack_table
from imagebuild.fs.iso9660.sysuse import Plan9Info
from imagebuild.fs.iso9660.voldesc import (
    BLOCK_SIZE,
    ROOT_RECORD_OFFSET,
    ROOT_RECORD_SIZE,
    STANDARD_ID,
    SYSTEM_AREA_BLOCKS,
    VD_PRIMARY,
    VD_TERMINATOR,
    IsoFormatError,
    VolumeDescriptor,
)
from imagebuild.fs.proto import DMDIR

MAX_DESCRIPTORS = 64  # a set longer than this is not one we wrote or can trust
MAX_DIRECTORY = 64 << 20  # refuse directory extents larger than this
READ_CHUNK = 1 << 20  # `cat` reads a file this much at a time

Pread = Callable[[int, int], bytes]  # (size, offset) -> bytes


@dataclass(frozen=True)
class IsoEntry:
    """A directory entry as a reader shows it (Plan 9 view when the image has one)."""

    name: str
    is_dir: bool
    mode: int  # Plan 9 Dir.mode (DMDIR included)
    uid: str
    gid: str
    mtime: int
    length: int
    extent: int
    identifier: bytes  # the on-disk identifier (conformed name / UCS-2)


class IsoImage:
    """An ISO 9660 image behind `pread(size, offset)` of `size` bytes."""

    def __init__(self, pread: Pread, size: int, name: str = "image") -> None:
        self.pread = pread
        self.size = size
        self.name = name
        self.descriptors: list[tuple[int, int]] = []  # (block, type)
        self.primary: VolumeDescriptor | None = None
        self.joliet: VolumeDescriptor | None = None
        self.catalog_block: int | None = None
        self._scan()

    # -- low level --
    def read(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise IsoFormatError(
                f"{self.name}: {what} at byte {offset} (+{size}) lies past the image's end "
                f"({self.size} bytes)"
            )
        data = self.pread(size, offset)
        if len(data) != size:
            raise IsoFormatError(f"{self.name}: short read of {what}")
        return data

    def block(self, number: int, what: str, count: int = 1) -> bytes:
        return self.read(number * BLOCK_SIZE, count * BLOCK_SIZE, what)

    def _scan(self) -> None:
        if self.size < (SYSTEM_AREA_BLOCKS + 1) * BLOCK_SIZE:
            raise IsoFormatError(f"{self.name}: too small for an ISO 9660 image")
        for number in range(SYSTEM_AREA_BLOCKS, SYSTEM_AREA_BLOCKS + MAX_DESCRIPTORS):
            data = self.block(number, f"volume descriptor {number}")
            if data[1:6] != STANDARD_ID:
                raise IsoFormatError(
                    f"{self.name}: block {number} is not a volume descriptor (no CD001)"
                )
            self.descriptors.append((number, data[0]))
            where = f"{self.name} block {number}"
            if data[0] == VD_TERMINATOR:
                break
            if data[0] == VD_PRIMARY and self.primary is None:
                self.primary = VolumeDescriptor.unpack(data, where)
            elif data[0] == 2:
                vd = VolumeDescriptor.unpack(data, where)
                if vd.is_joliet and self.joliet is None:
                    self.joliet = vd
            elif data[0] == 0:
                self.catalog_block = eltorito.parse_boot_record(data, where)
        else:
            raise IsoFormatError(f"{self.name}: no volume descriptor set terminator")
        if self.primary is None:
            raise IsoFormatError(f"{self.name}: no primary volume descriptor")

    # -- El Torito --
    def boot_catalog(self) -> eltorito.BootCatalog | None:
        if self.catalog_block is None:
            return None
        data = self.block(self.catalog_block, "boot catalog")
        return eltorito.BootCatalog.unpack(data, f"{self.name} boot catalog")

    # -- trees --
    def _root(self, joliet: bool) -> DirectoryRecord:
        vd = self.joliet if joliet else self.primary
        if vd is None:
            raise IsoFormatError(f"{self.name}: no Joliet volume descriptor")
        return DirectoryRecord.unpack(vd.root_record, f"{self.name} root record")

    def records(self, directory: DirectoryRecord) -> list[tuple[int, DirectoryRecord]]:
        if directory.data_length > MAX_DIRECTORY:
            raise IsoFormatError(f"{self.name}: directory of {directory.data_length} bytes")
        data = self.read(directory.extent * BLOCK_SIZE, directory.data_length, "directory")
        return iter_records(data, BLOCK_SIZE, f"{self.name} directory at block {directory.extent}")

    def entry(self, record: DirectoryRecord, joliet: bool) -> IsoEntry:
        if joliet:
            name = record.identifier.decode("utf-16-be", "replace")
            plan9 = None
        else:
            name = record.identifier.decode("latin-1").split(";", 1)[0].lower()
            plan9 = None
            if record.system_use and self.has_plan9:
                plan9 = Plan9Info.unpack(record.system_use, f"{self.name} {name}")
        if plan9 is not None:
            if plan9.name is not None:
                name = plan9.name.decode("utf-8", "replace")
            mode = plan9.mode  # names and owners from the image need not be UTF-8
            uid, gid = plan9.uid.decode("utf-8", "replace"), plan9.gid.decode("utf-8", "replace")
        else:
            mode = (DMDIR | 0o555) if record.is_dir else 0o444
            uid = gid = ""
        return IsoEntry(name, record.is_dir, mode, uid, gid, parse_record_date(record.date),
                        record.data_length, record.extent, record.identifier)

    @property
    def has_plan9(self) -> bool:
        assert self.primary is not None
        return self.primary.system_id.startswith(b"PLAN 9")

    def listdir(self, path: str, joliet: bool = False) -> list[IsoEntry]:
        record = self.lookup_record(path, joliet)
        if not record.is_dir:
            raise IsoFormatError(f"{self.name}: {path}: not a directory")
        return [self.entry(r, joliet) for _, r in self.records(record) if not r.is_dot]

    def lookup_record(self, path: str, joliet: bool = False) -> DirectoryRecord:
        record = self._root(joliet)
        walked = ""
        for elem in (e for e in path.split("/") if e):
            if not record.is_dir:
                raise IsoFormatError(f"{self.name}: {walked or '/'}: not a directory")
            walked += "/" + elem
            for _, child in self.records(record):
                if not child.is_dot and self.entry(child, joliet).name == elem:
                    record = child
                    break
            else:
                raise IsoFormatError(f"{self.name}: {walked}: no such file")
        return record

    def stat(self, path: str, joliet: bool = False) -> IsoEntry:
        record = self.lookup_record(path, joliet)
        if not path.strip("/"):
            return IsoEntry("/", True, DMDIR | 0o555, "", "", parse_record_date(record.date),
                            record.data_length, record.extent, record.identifier)
        return self.entry(record, joliet)

    def read_file(self, path: str, joliet: bool = False) -> bytes:
        return b"".join(self.iter_file(path, joliet))

    def iter_file(self, path: str, joliet: bool = False) -> Iterator[bytes]:
        """The file's bytes in pieces of at most READ_CHUNK bytes (bounded memory); raises
        IsoFormatError for a directory or an extent past the image's end."""
        record = self.lookup_record(path, joliet)
        if record.is_dir:
            raise IsoFormatError(f"{self.name}: {path}: is a directory")
        start, length = record.extent * BLOCK_SIZE, record.data_length
        self.read(start + length, 0, path)  # the whole extent lies inside the image
        return (self.read(start + at, min(READ_CHUNK, length - at), path)
                for at in range(0, length, READ_CHUNK))

    def walk(self, joliet: bool = False) -> list[tuple[str, IsoEntry]]:
        """Every entry, depth first, with its path; directories met twice, or more directory
        bytes than the image holds (overlapping extents), are an IsoFormatError."""
        out: list[tuple[str, IsoEntry]] = []
        seen: set[int] = set()
        total = 0  # directory bytes read: distinct extents that do not overlap fit the image
        stack: list[tuple[str, DirectoryRecord]] = [("", self._root(joliet))]
        while stack:
            path, record = stack.pop()
            if record.extent in seen:
                raise IsoFormatError(f"{self.name}: {path or '/'}: directory loop")
            seen.add(record.extent)
            total += record.data_length
            if total > self.size:
                raise IsoFormatError(f"{self.name}: {path or '/'}: directories overlap "
                                     f"({total} bytes of them in a {self.size}-byte image)")
            subdirs = []
            for _, child in self.records(record):
                if child.is_dot:
                    continue
                entry = self.entry(child, joliet)
                child_path = f"{path}/{entry.name}"
                out.append((child_path, entry))
                if child.is_dir:
                    subdirs.append((child_path, child))
            stack.extend(reversed(subdirs))
        return out

    def path_table(self, joliet: bool = False, big_endian: bool = False) -> list[PathTableRecord]:
        vd = self.joliet if joliet else self.primary
        assert vd is not None
        where = vd.m_path_table if big_endian else vd.l_path_table
        data = self.read(where * BLOCK_SIZE, vd.path_table_size, "path table")
        return unpack_table(data, big_endian, f"{self.name} path table")


def open_iso(path: str) -> tuple[IsoImage, Callable[[], None]]:
    """Open an image file; returns the reader and a function that closes the file."""
    import os

    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size

    def pread(n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    try:
        return IsoImage(pread, size, path), lambda: os.close(fd)
    except BaseException:
        os.close(fd)
        raise


def looks_like_iso(pread: Pread, size: int) -> bool:
    """True when a `size`-byte image has "CD001" in the first volume descriptor, block 16
    (ECMA-119 8.1); reads 6 bytes via `pread(length, offset)`. Raises only what `pread` raises.
    """
    if size < (SYSTEM_AREA_BLOCKS + 1) * BLOCK_SIZE:
        return False
    return pread(6, SYSTEM_AREA_BLOCKS * BLOCK_SIZE)[1:6] == STANDARD_ID


__all__ = [
    "ROOT_RECORD_OFFSET",
    "ROOT_RECORD_SIZE",
    "IsoEntry",
    "IsoImage",
    "looks_like_iso",
    "open_iso",
]


def _text(field: bytes, joliet: bool = False) -> str:
    if joliet:
        return field.decode("utf-16-be", "replace").rstrip(" \0")
    return field.decode("latin-1").rstrip(" \0")


def iso_info(image: IsoImage) -> dict[str, object]:
    """The descriptors and the boot catalog as plain data (for inspect and --json)."""
    from imagebuild.fs.iso9660.voldesc import parse_dec_datetime

    pvd = image.primary
    assert pvd is not None
    names = {0: "El Torito boot record", 1: "primary", 2: "supplementary", 255: "terminator"}
    info: dict[str, object] = {
        "descriptors": [
            {"block": block, "type": kind,
             "name": "Joliet" if image.joliet is not None and kind == 2 else names.get(kind, "?")}
            for block, kind in image.descriptors
        ],
        "system_id": _text(pvd.system_id),
        "volume_id": _text(pvd.volume_id),
        "joliet_volume_id": _text(image.joliet.volume_id, True) if image.joliet else None,
        "volume_blocks": pvd.volume_space_size,
        "path_table": {"size": pvd.path_table_size, "l": pvd.l_path_table,
                       "m": pvd.m_path_table},
        "created": parse_dec_datetime(pvd.creation),
        "plan9": image.has_plan9,
    }
    catalog = image.boot_catalog()
    if catalog is not None:
        entries = [("default", 0, catalog.default)] + [
            (f"section {i + 1}", platform, entry)
            for i, (platform, entry) in enumerate(catalog.sections)
        ]
        boot = []
        for label, platform, entry in entries:
            platform_name = {0: "BIOS", 0xEF: "EFI"}.get(platform, f"{platform:#x}")
            path = _path_at(image, entry.load_rba)
            boot.append({"entry": label, "platform": platform_name,
                         "bootable": entry.bootable, "media": entry.media,
                         "sectors": entry.sector_count, "lba": entry.load_rba, "file": path})
        info["boot_catalog"] = {"block": image.catalog_block, "entries": boot}
    return info


def _path_at(image: IsoImage, block: int) -> str | None:
    for path, entry in image.walk():
        if not entry.is_dir and entry.extent == block and entry.length:
            return path
    return None
