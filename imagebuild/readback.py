"""Read any disk image back, ours or not: container, MBR, Plan 9 table, FAT, hjfs.

The readers mirror 9front's.  With `verify` the MBR is also read by
libparted (pyparted), an independent reader, and any disagreement is an
error; that costs libparted's start-up, so it is asked for, not the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagebuild.container.qcow2.image import open_image
from imagebuild.disk.device import BlockDevice, PartFS, Storage
from imagebuild.errors import ImageBuildError


def mbr_table(disk: BlockDevice, *, verify: bool = False) -> list[dict[str, Any]]:
    """The used MBR entries (primary and logical): number, type, type_name, active,
    start and sectors (512-byte sectors).

    With `verify`, libparted must agree on every start, length and boot flag
    (it cannot report an msdos type byte); raises LayoutError where it does not.
    """
    from imagebuild.partition.dostable import read_mbr, read_partitions
    from imagebuild.partition.sector0 import SECTOR, has_magic

    if not has_magic(disk.pread(SECTOR, 0)):
        return []
    entries = read_mbr(disk)
    if verify:
        from imagebuild.partition.parted_check import verify_with_libparted

        verify_with_libparted(disk, entries)
    rows = [(slot + 1, e, e.lba, e.size) for slot, e in enumerate(entries) if e.used]
    logical = [p for p in read_partitions(disk) if not p.primary]
    rows += [(5 + i, p.entry, p.start, p.size) for i, p in enumerate(logical)]
    return [
        {"number": number, "type": entry.type, "type_name": entry.type_name,
         "active": entry.bootable, "start": start, "sectors": sectors}
        for number, entry, start, sectors in rows
    ]


def _fat_info(device: BlockDevice, name: str) -> dict[str, Any]:
    from imagebuild.fs.fat.format import FatVolume

    volume = FatVolume(device)
    params = volume.params
    return {
        "partition": name,
        "fat_bits": params.fat_bits,
        "cluster_size": params.cluster_size,
        "params": {k: v for k, v in params.as_dict().items() if isinstance(v, int | str)},
        "files": [
            {"name": e.name, "short_name": e.short_name, "size": e.size,
             "mtime": e.mtime.isoformat() if hasattr(e.mtime, "isoformat") else str(e.mtime),
             "dir": e.is_dir}
            for e in volume.listdir("/")
        ],
    }


def partitions(disk: BlockDevice) -> PartFS:
    """partfs as fdisk and prep would have populated it for this disk."""
    from imagebuild.partition.fdisk import partfs_names
    from imagebuild.partition.prep import read_table
    from imagebuild.partition.sector0 import SECTOR, has_magic

    parts = PartFS(disk)
    if disk.size >= SECTOR and has_magic(disk.pread(SECTOR, 0)):
        for name, start, end in partfs_names(disk):
            parts.add(name, start, end)
    if "plan9" in parts:
        plan9 = parts["plan9"]
        for sub in read_table(plan9):
            if sub.name not in parts:
                parts.add(sub.name, plan9.offset + sub.start, plan9.offset + sub.end)
    return parts


def inspect_image(path: Path, *, verify: bool = False, fs: bool = True) -> dict[str, Any]:
    """Everything we can read from the image, as plain data (for tables and --json).

    Keys: path, format, virtual_size, file_size, disk_usage (bytes), qcow2
    (header fields), mbr (mbr_table rows), plan9 (name, start, end sectors),
    fs (hjfs summary), fat (per FAT partition: fat_bits, cluster_size, files),
    problems (lines, when a partition cannot be read), unreadable (the error, when
    the backing file of an overlay is missing: only its header is shown).  `verify`: see
    mbr_table.  `fs` False skips the fs partition (a build that wrote none).
    Raises ImageFormatError and OSError naming the image.
    """
    from imagebuild.container.qcow2.backing import BackingFileMissing
    from imagebuild.partition.prep import read_table

    try:
        opened = open_image(path)
    except BackingFileMissing as err:
        return _header_only(path, err)
    with opened as image:
        disk = BlockDevice(image.storage, name=path.name)
        info: dict[str, Any] = {
            "path": str(path),
            "format": image.format,
            "virtual_size": image.storage.size,
            "file_size": path.stat().st_size,
            "disk_usage": _allocated_size(path),
        }
        if image.format == "qcow2":
            info["qcow2"] = image.info()
        mbr = mbr_table(disk, verify=verify) if disk.size >= 512 else []
        info["mbr"] = mbr
        parts = partitions(disk)
        if "plan9" in parts:
            info["plan9"] = [
                {"name": p.name, "start": p.start, "end": p.end} for p in read_table(parts["plan9"])
            ]
        if fs and "fs" in parts:
            try:
                info["fs"] = _fs_info(parts["fs"])
            except ImageBuildError as err:
                info.setdefault("problems", []).append(f"fs: {err}")
        elif fs and "fscache" in parts and "fsworm" in parts:
            try:
                info["fs"] = _cwfs_info(parts)
            except ImageBuildError as err:
                info.setdefault("problems", []).append(f"fs: {err}")
        _iso_section(image.storage, path, info)
        info["fat"] = []
        for name in ("9fat", "dos", "esp"):
            if name in parts:
                try:
                    info["fat"].append(_fat_info(parts[name], name))
                except ImageBuildError as err:
                    info.setdefault("problems", []).append(f"{name}: {err}")
        return info


def _header_only(path: Path, err: Exception) -> dict[str, Any]:
    """What inspect can show of an overlay whose backing file is missing: its own header,
    as qemu-img info does; `unreadable` holds the error."""
    from imagebuild.container.qcow2.image import Qcow2Image

    with Qcow2Image.open(path, backing=False) as image:
        return {"path": str(path), "format": "qcow2", "virtual_size": image.size,
                "file_size": path.stat().st_size, "disk_usage": _allocated_size(path),
                "qcow2": image.info(), "mbr": [], "fat": [], "problems": [str(err)],
                "unreadable": str(err)}


ISO_ID_AT = 16 * 2048 + 1  # the standard identifier of the first volume descriptor
ISO_ID_END = 17 * 2048  # an image shorter than the system area and one descriptor


def _iso_section(storage: Storage, path: Path, info: dict[str, Any]) -> None:
    """An ISO 9660 volume (the ISO targets, hybrid or not): descriptors and boot catalog."""
    # ECMA-119 8.1: "CD001" at byte 1 of block 16; checked here first because the reader's
    # modules cost more to import than a disk image's whole inspection
    if storage.size < ISO_ID_END or storage.pread(5, ISO_ID_AT) != b"CD001":
        return
    from imagebuild.fs.iso9660.reader import IsoImage, iso_info, looks_like_iso

    if looks_like_iso(storage.pread, storage.size):
        try:
            info["iso"] = iso_info(IsoImage(storage.pread, storage.size, path.name))
        except ImageBuildError as err:
            info.setdefault("problems", []).append(f"iso: {err}")


def _allocated_size(path: Path) -> int:
    st = os.stat(path)
    return min(st.st_size, st.st_blocks * 512)


def _fs_info(device: BlockDevice) -> dict[str, Any] | None:
    """The hjfs or gefs summary, or None when the partition holds neither (never formatted)."""
    import dataclasses

    from imagebuild.fs.hjfs import HjfsVolume, is_hjfs

    gefs = _gefs(device)
    if gefs is not None:
        return {"type": "gefs", **dataclasses.asdict(gefs.summary())}
    if not is_hjfs(device):
        return None
    summary = HjfsVolume(device).summary()
    return {"type": "hjfs", **dataclasses.asdict(summary)}


def _cwfs_info(parts: PartFS) -> dict[str, Any] | None:
    """The cwfs summary of main, or None when fscache holds no cwfs config block."""
    import dataclasses

    from imagebuild.fs.cwfs import CwfsVolume, is_cwfs

    if not is_cwfs(parts["fscache"]):
        return None
    summary = CwfsVolume(parts["fscache"], parts["fsworm"]).summary()
    return {"type": "cwfs", **dataclasses.asdict(summary)}


def _attach_name(part: str, file: str) -> tuple[str, str]:
    """`fs:ANAME:/PATH`: the attach name a 9P client gives the file server (gefs: a dataset
    label such as adm or other, `%` allowed; cwfs: main, other or dump), "" when the spec
    names none (the main tree); then the path."""
    head, sep, rest = file.partition(":")
    if part not in FS_PARTITIONS or not sep or "/" in head:
        return "", file
    return head.removeprefix("%"), rest or "/"


def _gefs_label(path: Path, gefs: Any, aname: str) -> str:
    """fs.c fsattach(): "" is main, any other name a label; "dump" lists the snapshots."""
    labels = ", ".join(sorted(gefs.labels()))
    if aname == "dump":
        raise ImageBuildError(f"{path}: gefs attach name 'dump' (the snapshot list) is not "
                              f"supported; name a dataset: {labels}")  # fmt: skip
    if aname and aname not in gefs.labels():
        raise ImageBuildError(f"{path}: gefs has no dataset {aname!r} (labels: {labels})")
    return aname or "main"


def _no_hjfs_aname(path: Path, aname: str) -> None:
    if aname:
        raise ImageBuildError(f"{path}: attach name {aname!r}: hjfs serves one tree (we do not "
                              "read its dump); names are for gefs datasets and cwfs file "
                              "systems")  # fmt: skip


def _gefs_read(path: Path, gefs: Any, file: str, label: str) -> Iterator[bytes]:
    """The file's bytes a block at a time; on main, a missing /adm/users says where gefs
    keeps the users file."""
    try:
        return iter(gefs.iter_read(file, label))
    except ImageBuildError as err:
        if label == "main" and os.path.normpath("/" + file.lstrip("/")) == "/adm/users":
            raise ImageBuildError(f"{err} in dataset main; gefs keeps the users file in the "
                                  "adm dataset: fs:adm:/users") from None  # fmt: skip
        raise


@contextmanager
def _cwfs_volume(path: Path, part: str, aname: str = "") -> Iterator[Any]:
    """For `fs:` on a disk prepared for cwfs (fscache, fsworm, other), the file system the
    attach name picks (main by default, other, dump)."""
    if part != "fs":
        yield None
        return
    with open_image(path) as image:
        parts = partitions(BlockDevice(image.storage, name=path.name))
        if "fs" in parts or "fscache" not in parts or "fsworm" not in parts:
            yield None
            return
        from imagebuild.fs.cwfs import CwfsVolume

        other = [parts[n] for n in ("other",) if n in parts]
        yield CwfsVolume(parts["fscache"], parts["fsworm"], *other, filsys=aname or "main")


def _gefs(device: BlockDevice) -> Any:
    """A GefsVolume when the partition holds gefs, else None."""
    from imagebuild.fs.gefs import GefsVolume, is_gefs

    if not is_gefs(device.pread):
        return None
    return GefsVolume(device.pread, device.size)


FAT_PARTITIONS = ("9fat", "dos", "esp")
FS_PARTITIONS = ("fs",)


ISO_TREES = ("iso", "joliet")  # the ISO 9660 tree with Plan 9 names, the Joliet tree


def _split_spec(path: Path, spec: str) -> tuple[str, str]:
    part, sep, file = spec.partition(":")
    if not sep or not part:
        raise ImageBuildError(f"{spec!r}: expected PARTITION:PATH, e.g. 9fat:plan9.ini or fs:/lib")
    if part not in FAT_PARTITIONS + FS_PARTITIONS + ISO_TREES:
        raise ImageBuildError(
            f"{path}: partition {part!r} holds no file system we read "
            f"(we read {', '.join(FAT_PARTITIONS + FS_PARTITIONS + ISO_TREES)})"
        )
    return part, file or "/"


@contextmanager
def _partition(path: Path, part: str) -> Iterator[BlockDevice]:
    with open_image(path) as image:
        disk = BlockDevice(image.storage, name=path.name)
        parts = partitions(disk)
        if part not in parts:
            have = ", ".join(n for n, _, _ in parts) or "none"
            raise ImageBuildError(f"{path}: no partition {part!r} (partitions: {have})")
        yield parts[part]


@contextmanager
def _iso(path: Path) -> Iterator[Any]:
    from imagebuild.fs.iso9660.reader import IsoImage, looks_like_iso

    with open_image(path) as image:
        storage = image.storage
        if not looks_like_iso(storage.pread, storage.size):
            raise ImageBuildError(f"{path}: not an ISO 9660 image (no CD001 at block 16)")
        yield IsoImage(storage.pread, storage.size, path.name)


def cat(path: Path, spec: str) -> bytes:
    """`9fat:plan9.ini`, `fs:/lib/ndb/local` or `fs:adm:/users` (a gefs dataset, a cwfs
    file system) -> the file's bytes."""
    return b"".join(cat_stream(path, spec))


def cat_stream(path: Path, spec: str) -> Iterator[bytes]:
    """The file's bytes in pieces, streamed block by block (bounded memory)."""
    part, file = _split_spec(path, spec)
    if part in ISO_TREES:
        with _iso(path) as iso:
            yield from iso.iter_file(file, joliet=part == "joliet")
            return
    aname, file = _attach_name(part, file)
    with _cwfs_volume(path, part, aname) as cw:
        if cw is not None:
            yield from cw.iter_read(file)
            return
    with _partition(path, part) as device:
        if part in FS_PARTITIONS:
            from imagebuild.fs.hjfs import HjfsVolume

            gefs = _gefs(device)
            if gefs is not None:
                yield from _gefs_read(path, gefs, file, _gefs_label(path, gefs, aname))
                return
            _no_hjfs_aname(path, aname)
            yield from HjfsVolume(device).iter_read(file)
            return
        from imagebuild.fs.fat.format import FatVolume

        yield FatVolume(device).read(file)


def listing(path: Path, spec: str) -> list[dict[str, Any]]:
    """`fs:/usr` -> one dict per entry (name, mode, owner, group, size, mtime)."""
    part, directory = _split_spec(path, spec)
    if part in ISO_TREES:
        with _iso(path) as iso:
            return [
                {"name": e.name, "mode": e.mode, "dir": e.is_dir, "uid": e.uid, "gid": e.gid,
                 "size": e.length, "mtime": e.mtime}
                for e in iso.listdir(directory, joliet=part == "joliet")
            ]
    aname, directory = _attach_name(part, directory)
    with _cwfs_volume(path, part, aname) as cw:
        if cw is not None:
            return [
                {"name": st.name, "mode": st.mode, "dir": st.is_dir, "uid": st.uid,
                 "gid": st.gid, "size": st.length, "mtime": st.mtime}
                for st in cw.scandir(directory)
            ]
    with _partition(path, part) as device:
        if part in FS_PARTITIONS:
            from imagebuild.fs.hjfs import HjfsVolume

            gefs = _gefs(device)
            if gefs is not None:
                stats = gefs.scandir(directory, _gefs_label(path, gefs, aname))
            else:
                _no_hjfs_aname(path, aname)
                stats = HjfsVolume(device).scandir(directory)
            return [
                {"name": st.name, "mode": st.mode, "dir": st.is_dir, "uid": st.uid,
                 "gid": st.gid, "size": st.length, "mtime": st.mtime}
                for st in stats
            ]
        from imagebuild.fs.fat.format import FatVolume

        return [
            {"name": e.name, "mode": e.attributes, "dir": e.is_dir, "uid": "", "gid": "",
             "size": e.size, "mtime": int(e.mtime.timestamp())}
            for e in FatVolume(device).listdir(directory)
        ]


def check_fs(path: Path, part: str) -> list[str]:
    """Recount every hjfs reference and walk every directory; the problems found.  A gefs
    check's warnings are printed on stdout as they come, each on its own line."""
    if part not in FS_PARTITIONS:
        raise ImageBuildError(f"{path}: fsck checks hjfs partitions ({', '.join(FS_PARTITIONS)})")
    from imagebuild.fs.hjfs import fsck

    with _cwfs_volume(path, part) as cw:
        if cw is not None:
            from imagebuild.fs.cwfs import fsck as cwfs_fsck

            return cwfs_fsck(cw.main.device, cw.main.worm, cw.other.device if cw.other else None)
    with _partition(path, part) as device:
        gefs = _gefs(device)
        if gefs is not None:
            from imagebuild.fs.gefs import fsck as gefs_fsck

            result = gefs_fsck(gefs)
            for w in result.warnings:  # on stdout with the problems: stderr gets one line
                print(f"{path}:{part}: warning: {w}")
            return result.errors
        return fsck(device)


def repair_fs(path: Path, part: str, *, overlay: Path | None, in_place: bool) -> str:
    """Repair what fsck --repair knows how to (gefs: the mis-reamed adm root backlink).

    Writes through a new qcow2 overlay `overlay` whose backing file is
    `path`, or into `path` itself when `in_place`.  Returns a summary line.
    """
    from imagebuild.container.qcow2.image import Qcow2Image
    from imagebuild.container.qcow2.image import open_image as open_container
    from imagebuild.fs.gefs.repair import repair_adm_backlink
    from imagebuild.pipeline.output import atomic_output

    if part not in FS_PARTITIONS:
        raise ImageBuildError(f"{path}: fsck --repair works on {', '.join(FS_PARTITIONS)}")
    if in_place:
        with open_container(path, writable=True) as image:
            storage = image.data if isinstance(image, Qcow2Image) else image
            disk = BlockDevice(storage, name=path.name)
            parts = partitions(disk)
            if part not in parts or _gefs(parts[part]) is None:
                raise ImageBuildError(f"{path}:{part}: no gefs file system to repair")
            return str(repair_adm_backlink(parts[part]))
    assert overlay is not None
    if overlay.resolve() == path.resolve():
        raise ImageBuildError(f"{overlay}: the overlay must not replace its own backing file")
    with open_image(path) as base:
        size, base_format = base.storage.size, base.format
    backing = os.path.relpath(path.resolve(), overlay.resolve().parent)
    with atomic_output(overlay) as tmp, Qcow2Image.create(
        tmp, size, backing_file=backing, backing_format=base_format
    ) as image:
        disk = BlockDevice(image.data, name=overlay.name)
        parts = partitions(disk)
        if part not in parts or _gefs(parts[part]) is None:
            raise ImageBuildError(f"{path}:{part}: no gefs file system to repair")
        return str(repair_adm_backlink(parts[part]))
