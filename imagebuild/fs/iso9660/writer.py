"""disk/mk9660 -c9j [-B bootimage] [-E efibootimage] -v VOLUME: write an ISO 9660 image.

Source: sys/src/cmd/disk/9660/dump9660.c (main with -M, the mk9660 path),
cdrdwr.c (createcd), write.c (writefiles, _writedirs, genputdir,
Cputplan9), direc.c, conform.c, path.c, boot.c.  The image, block by block:

    0-15   zero (system area)
    16     primary volume descriptor      17  El Torito boot record
    18     Joliet supplementary descriptor 19  terminator
    20     boot catalog
    21...  file data, depth first in name order (strcmp), each file from a
           block boundary; a file whose MD5 matches an earlier file's shares
           that file's extent (its copy is written, then overwritten)
           ISO 9660 directories, children before parents (isocmp order)
           Joliet directories, likewise (jolietcmp order)
           the conform map text (`good bad` lines), if any name was bad
           L and M path tables of the ISO tree, then of the Joliet tree

The volume space size written into the descriptors is the block count
before the path tables, as mk9660 sets it before writepathtables().
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from imagebuild.fs.iso9660 import eltorito, names
from imagebuild.fs.iso9660.dirrec import (
    DOT,
    DOTDOT,
    FLAG_DIRECTORY,
    MAX_RECORD,
    DirectoryRecord,
    record_date,
    record_length,
)
from imagebuild.fs.iso9660.pathtable import PathTableRecord, pack_table
from imagebuild.fs.iso9660.sysuse import Plan9Info, plan9_size
from imagebuild.fs.iso9660.tree import MAX_U32, Direc, build_tree
from imagebuild.fs.iso9660.voldesc import (
    BLOCK_SIZE,
    JOLIET_UCS2_LEVEL2,
    SYSTEM_AREA_BLOCKS,
    VD_PRIMARY,
    VD_SUPPLEMENTARY,
    IsoFormatError,
    VolumeDescriptor,
    a_string,
    dec_datetime,
    terminator,
    ucs2_string,
)
from imagebuild.fs.proto import ProtoEntry

COPY_CHUNK = 1 << 20

# dump9660.c main(): the Cdinfo strings mk9660 never lets one change
VOLUME_SET = "9VolumeSet"
PUBLISHER = "9Publisher"
PREPARER = "dump9660"
APPLICATION = "dump9660"
JOLIET_SYSTEM_ID = "Joliet Plan 9"


@dataclass
class IsoSummary:
    """What the writer laid down: block numbers and sizes, and mk9660's warnings."""

    volume_blocks: int  # the descriptors' volume space size
    image_bytes: int  # the file's length (path tables, and stale copies, beyond the volume)
    boot_block: int | None
    efi_block: int | None
    conform_block: int | None
    conform_bytes: int
    files: int
    directories: int
    warnings: list[str]


class _Image:
    """The output file as Cdimg's write side sees it: a position, nextblock, a high-water mark."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.pos = 0
        self.nextblock = 0
        self.hwm = 0

    def seek(self, offset: int) -> None:
        self.pos = offset

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.seek(self.pos)
        self.out.write(data)
        self.pos += len(data)
        self.hwm = max(self.hwm, self.pos)

    def pad_block(self) -> None:
        """Cpadblock(): zeros to the block end; nextblock grows to cover what is written."""
        gap = -self.pos % BLOCK_SIZE
        if gap:
            self.write(bytes(gap))
        self.nextblock = max(self.nextblock, self.pos // BLOCK_SIZE)


@dataclass
class Mk9660Options:
    """The flags of one disk/mk9660 run (9front 9660 dump9660.c main()): volume ID,
    `now` and `pinned_time` in seconds since the epoch, -B/-E boot image paths in the tree,
    and whether to copy path.c's leaving-out of a record that ends at a block boundary.
    """

    volume_id: str
    now: int  # mk9660's clock: the root's times and the volume dates
    boot_image: str | None = None  # -B: a path in the tree (no emulation)
    efi_boot_image: str | None = None  # -E
    pinned_time: int | None = None  # SOURCE_DATE_EPOCH: no file time later than this
    # True: leave out, as path.c does, a directory whose record ends exactly at a block's end
    faithful_path_table: bool = False


class Mk9660:
    """One run of mk9660 over a tree into an open, empty, seekable file."""

    def __init__(self, root: Direc, options: Mk9660Options, out: BinaryIO) -> None:
        self.root = root
        self.options = options
        self.image = _Image(out)
        self.conform = names.ConformMap()
        self.md5: dict[bytes, tuple[int, int]] = {}
        self.warnings: list[str] = []
        self.files = 0
        self.dirs = 0
        self.bootable = bool(options.boot_image or options.efi_boot_image)

    # -- checks before the first byte ------------------------------------------------------

    def check(self) -> None:
        for label, path in (("-B", self.options.boot_image), ("-E", self.options.efi_boot_image)):
            if path is None:
                continue
            node = self.root.walk(path)
            if node is None or node.is_dir:
                raise IsoFormatError(f"boot image {path} ({label}) is not a file of the tree")
            if node.length == 0:
                raise IsoFormatError(f"boot image {path} ({label}) is empty")
        efi = self.options.efi_boot_image
        if efi is not None:
            node = self.root.walk(efi)
            assert node is not None
            if math.ceil(node.length / eltorito.VIRTUAL_SECTOR) > 0xFFFF:
                raise IsoFormatError(
                    f"EFI boot image {efi}: {node.length} bytes do not fit El Torito's 16-bit "
                    "sector count (at most 32 MiB)"
                )
        total = SYSTEM_AREA_BLOCKS + 8
        stack = [(self.root, "")]
        while stack:
            direc, path = stack.pop()
            for child in direc.children:
                child_path = f"{path}/{child.name}"
                self._check_record(child, child_path)
                if child.is_dir:
                    stack.append((child, child_path))
                    total += 4
                else:
                    total += 2 * math.ceil(child.length / BLOCK_SIZE)
        if total > MAX_U32:
            raise IsoFormatError(
                f"the tree needs {total} blocks: ISO 9660 block numbers are 32 bits"
            )

    def _check_record(self, direc: Direc, path: str) -> None:
        bad = names.is_bad_iso9660(direc.name)
        ident = 7 if bad else len(direc.name)
        name = len(direc.name.encode()) if bad else None
        use = plan9_size(name, len(direc.uid.encode()), len(direc.gid.encode()))
        if record_length(ident, use) > MAX_RECORD:
            raise IsoFormatError(
                f"{path}: mk9660 cannot store this entry: its directory record with the Plan 9 "
                f"name, owner {direc.uid!r} and group {direc.gid!r} would be "
                f"{record_length(ident, use)} bytes (at most {MAX_RECORD})"
            )

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> IsoSummary:
        self.check()
        img = self.image
        joliet_block = SYSTEM_AREA_BLOCKS + (2 if self.bootable else 1)
        catalog_block = joliet_block + 2 if self.bootable else None
        img.nextblock = joliet_block + 2 + (1 if self.bootable else 0)

        self.write_files(self.root)
        catalog = self.boot_catalog() if self.bootable else None

        jroot = self.root.copy()
        self.check_names(self.root, names.is_bad_iso9660, is_root=True)
        self.convert_names(self.root, upper=True)
        self.dsort(self.root, lambda a, b: names.iso_compare(a.confname, b.confname))
        self.check_names(jroot, names.is_bad_joliet, is_root=True)
        self.convert_names(jroot, upper=False)
        self.dsort(jroot, lambda a, b: names.joliet_compare(a.confname, b.confname))

        self.write_dirs(self.root, joliet=False)
        self.write_dirs(jroot, joliet=True)

        conform_block, conform_bytes = None, 0
        if len(self.conform):
            conform_block = img.nextblock
            text = self.conform.text()
            img.seek(conform_block * BLOCK_SIZE)
            img.write(text)
            img.pad_block()
            conform_bytes = len(text)
        volume_blocks = img.nextblock

        pvd = self.descriptor(VD_PRIMARY, self.root, volume_blocks)
        svd = self.descriptor(VD_SUPPLEMENTARY, jroot, volume_blocks)
        for vd, tree in ((pvd, self.root), (svd, jroot)):
            records = self.path_table(tree, joliet=vd is svd)
            little = pack_table(records, big_endian=False)
            vd.l_path_table = img.nextblock
            img.seek(img.nextblock * BLOCK_SIZE)
            img.write(little)
            img.pad_block()
            vd.m_path_table = img.nextblock
            img.write(pack_table(records, big_endian=True))
            img.pad_block()
            vd.path_table_size = len(little)

        img.seek(SYSTEM_AREA_BLOCKS * BLOCK_SIZE)
        img.write(pvd.pack())
        if catalog_block is not None:
            img.write(eltorito.boot_record(catalog_block))
        img.write(svd.pack())
        img.write(terminator())
        if catalog is not None:
            img.write(catalog.pack())
        size = max(img.hwm, img.nextblock * BLOCK_SIZE)
        img.out.truncate(size)
        boot = self.root.walk(self.options.boot_image) if self.options.boot_image else None
        efi = self.root.walk(self.options.efi_boot_image) if self.options.efi_boot_image else None
        return IsoSummary(
            volume_blocks=volume_blocks,
            image_bytes=size,
            boot_block=boot.block if boot else None,
            efi_block=efi.block if efi else None,
            conform_block=conform_block,
            conform_bytes=conform_bytes,
            files=self.files,
            directories=self.dirs,
            warnings=self.warnings,
        )

    def write_files(self, direc: Direc) -> None:
        """writefiles(): depth first, children in name order; MD5-equal files share an extent."""
        if direc.is_dir:
            for child in direc.children:
                self.write_files(child)
            return
        assert direc.source is not None
        img = self.image
        start = img.nextblock
        img.seek(start * BLOCK_SIZE)
        digest = hashlib.md5()
        length = 0
        try:
            with open(direc.source, "rb") as f:
                while chunk := f.read(COPY_CHUNK):
                    digest.update(chunk)
                    img.write(chunk)
                    length += len(chunk)
                    if length > MAX_U32:
                        raise IsoFormatError(
                            f"{direc.source}: grew past {MAX_U32} bytes: ISO 9660 sizes are 32 bits"
                        )
        except OSError as e:
            raise IsoFormatError(f"{direc.source}: cannot read: {e.strerror}") from None
        img.pad_block()
        self.files += 1
        if length != direc.length:
            self.warnings.append(f"warning: {direc.source} changed size underfoot")
            direc.length = length
        if length == 0:
            direc.block = 0
            return
        key = digest.digest()
        if key in self.md5:
            direc.block = self.md5[key][0]
            img.nextblock = start
        else:
            direc.block = start
            self.md5[key] = (start, length)

    def boot_catalog(self) -> eltorito.BootCatalog:
        """Cupdatebootcat(): the default entry for -B (else -E), an EFI section for -E with -B."""
        opts = self.options
        first = opts.boot_image or opts.efi_boot_image
        assert first is not None
        node = self.root.walk(first)
        assert node is not None
        count = math.ceil(node.length / eltorito.VIRTUAL_SECTOR)
        if opts.boot_image:
            count = min(count, eltorito.BIOS_MAX_SECTORS)
        default = eltorito.BootEntry(node.block, count)
        sections: tuple[tuple[int, eltorito.BootEntry], ...] = ()
        if opts.boot_image and opts.efi_boot_image:
            efi = self.root.walk(opts.efi_boot_image)
            assert efi is not None
            entry = eltorito.BootEntry(efi.block, math.ceil(efi.length / eltorito.VIRTUAL_SECTOR))
            sections = ((eltorito.PLATFORM_EFI, entry),)
        return eltorito.BootCatalog(eltorito.ValidationEntry(), default, sections)

    def check_names(self, direc: Direc, is_bad: object, *, is_root: bool = False) -> None:
        """checknames(): flag bad names (never the root's); `_conform.map` is always bad."""
        assert callable(is_bad)
        if not is_root and is_bad(direc.name):
            direc.bad = True
        if direc.name == names.CONFORM_MAP_NAME:
            direc.bad = True
        for child in direc.children:
            self.check_names(child, is_bad)

    def convert_names(self, direc: Direc, *, upper: bool) -> None:
        """convertnames(): pre-order; bad names become D/F numbers (struprcpy for ISO)."""
        name = self.conform.conform(direc.name, direc.is_dir) if direc.bad else direc.name
        # struprcpy(): good ISO names and D/F numbers are ASCII, toupper() maps a-z
        direc.confname = name.upper() if upper else name
        for child in direc.children:
            self.convert_names(child, upper=upper)

    def dsort(self, direc: Direc, compare: object) -> None:
        assert callable(compare)
        names.plan9_qsort(direc.children, compare)
        for child in direc.children:
            self.dsort(child, compare)

    # -- directories -----------------------------------------------------------------------

    def identifier(self, direc: Direc, joliet: bool) -> bytes:
        if joliet:
            return direc.confname.encode("utf-16-be")
        return direc.confname.encode("utf-8")

    def system_use(self, direc: Direc, joliet: bool) -> bytes:
        if joliet:
            return b""
        return Plan9Info(
            direc.name.encode() if direc.bad else None,
            direc.uid.encode(),
            direc.gid.encode(),
            direc.mode,
        ).pack()

    def lay_out(self, direc: Direc, joliet: bool) -> int:
        """_writedirs()'s sizing pass: record offsets, a record never crossing a block end."""
        offset = 0
        direc.layout = []
        records: list[tuple[int, bool, bytes, Direc | None]] = [
            (record_length(1, 0), True, DOT, None),
            (record_length(1, 0), True, DOTDOT, None),
        ]
        for child in direc.children:
            ident = self.identifier(child, joliet)
            use = self.system_use(child, joliet)
            records.append((record_length(len(ident), len(use)), child.is_dir, ident, child))
        for length, is_dir, ident, kid in records:
            if BLOCK_SIZE - offset % BLOCK_SIZE < length:
                offset += BLOCK_SIZE - offset % BLOCK_SIZE
            direc.layout.append((offset, length, is_dir, ident, kid))
            offset += length
        return math.ceil(offset / BLOCK_SIZE)

    def write_dirs(self, root: Direc, *, joliet: bool) -> None:
        """_writedirs(): children first, then the directory; `..` patched to the parent."""
        order: list[tuple[Direc, Direc]] = []

        def post(direc: Direc, parent: Direc) -> None:
            for child in direc.children:
                if child.is_dir:
                    post(child, direc)
            blocks = self.lay_out(direc, joliet)
            direc.block = self.image.nextblock
            direc.length = blocks * BLOCK_SIZE
            self.image.nextblock += blocks
            order.append((direc, parent))

        post(root, root)
        if root.length > MAX_U32:
            raise IsoFormatError("a directory extent passes 4 GiB")
        for direc, parent in order:
            self.dirs += 1
            extent = bytearray(direc.length)
            for offset, _length, _is_dir, ident, child in direc.layout:
                if child is None:
                    target = direc if ident == DOT else parent
                    when = direc.mtime if ident == DOT else self.options.now
                    record = DirectoryRecord(target.block, target.length, record_date(when),
                                             FLAG_DIRECTORY, ident)
                else:
                    record = DirectoryRecord(
                        child.block, child.length, record_date(child.mtime),
                        FLAG_DIRECTORY if child.is_dir else 0, ident,
                        self.system_use(child, joliet),
                    )
                packed = record.pack()
                extent[offset : offset + len(packed)] = packed
            self.image.seek(direc.block * BLOCK_SIZE)
            self.image.write(extent)
            self.image.pad_block()

    # -- descriptors and path tables --------------------------------------------------------

    def descriptor(self, kind: int, root: Direc, volume_blocks: int) -> VolumeDescriptor:
        """Cputisopvd()/Cputjolietsvd() with setroot() and setvolsize() applied."""
        opts = self.options
        root_record = DirectoryRecord(
            root.block, root.length, record_date(opts.now), FLAG_DIRECTORY, DOT
        ).pack()
        if kind == VD_PRIMARY:
            system = "PLAN 9 " + ("BOOT " if self.bootable else "") + "ISO9660"
            return VolumeDescriptor(
                type=VD_PRIMARY,
                system_id=a_string(system, 32),
                volume_id=a_string(opts.volume_id, 32),
                escape_sequences=bytes(32),
                volume_space_size=volume_blocks,
                path_table_size=0, l_path_table=0, m_path_table=0,
                root_record=root_record,
                volume_set_id=a_string(VOLUME_SET, 128),
                publisher_id=a_string(PUBLISHER, 128),
                preparer_id=a_string(PREPARER, 128),
                application_id=a_string(APPLICATION, 128),
                copyright_file=b" " * 37, abstract_file=b" " * 37, bibliographic_file=b" " * 37,
                creation=dec_datetime(opts.now), modification=dec_datetime(opts.now),
                expiration=dec_datetime(0), effective=dec_datetime(0),
            )
        return VolumeDescriptor(
            type=VD_SUPPLEMENTARY,
            system_id=ucs2_string(JOLIET_SYSTEM_ID, 32),
            volume_id=ucs2_string(opts.volume_id, 32),
            escape_sequences=JOLIET_UCS2_LEVEL2,
            volume_space_size=volume_blocks,
            path_table_size=0, l_path_table=0, m_path_table=0,
            root_record=root_record,
            volume_set_id=ucs2_string(VOLUME_SET, 128),
            publisher_id=ucs2_string(PUBLISHER, 128),
            preparer_id=ucs2_string(PREPARER, 128),
            application_id=ucs2_string(APPLICATION, 128),
            copyright_file=ucs2_string("", 37), abstract_file=ucs2_string("", 37),
            bibliographic_file=ucs2_string("", 37),
            creation=dec_datetime(opts.now), modification=dec_datetime(opts.now),
            expiration=dec_datetime(0), effective=dec_datetime(0),
        )

    def path_table(self, root: Direc, *, joliet: bool) -> list[PathTableRecord]:
        """writepathtable(): breadth first over the directory records as written.

        path.c reads a block's records only while one ends before the block's
        end, so a directory whose record fills its block exactly is left out
        (with its subtree); `faithful_path_table=False` lists it.
        """
        records = [PathTableRecord(DOT, root.block, 1)]
        queue = [root]
        number = 0
        while number < len(queue):
            direc = queue[number]
            number += 1
            for offset, length, is_dir, ident, child in direc.layout:
                if child is None or not is_dir:
                    continue
                fills_block = (offset % BLOCK_SIZE) + length >= BLOCK_SIZE
                if self.options.faithful_path_table and fills_block:
                    continue
                records.append(PathTableRecord(ident, child.block, number))
                queue.append(child)
        del joliet
        return records


def write_iso(
    entries: Sequence[ProtoEntry], out: BinaryIO, options: Mk9660Options
) -> IsoSummary:
    """mk9660 -c9j over proto entries (fs.proto.read_proto's order) into `out` (empty,
    seekable, opened for writing).  Raises IsoFormatError before writing anything when
    the tree cannot be stored; returns the layout.  Times: Unix seconds, UTC."""
    root, warnings = build_tree(entries, options)
    writer = Mk9660(root, options, out)
    summary = writer.run()
    summary.warnings[:0] = warnings
    return summary


def image_size_estimate(entries: Sequence[ProtoEntry]) -> int:
    """An upper bound in bytes, for progress reports."""
    files = sum(math.ceil(e.length / BLOCK_SIZE) for e in entries if not e.is_dir)
    dirs = sum(1 for e in entries if e.is_dir)
    return (files + 4 * dirs + 64) * BLOCK_SIZE


__all__ = [
    "Direc",
    "IsoSummary",
    "Mk9660",
    "Mk9660Options",
    "build_tree",
    "image_size_estimate",
    "write_iso",
]
