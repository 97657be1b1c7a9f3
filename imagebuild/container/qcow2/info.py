"""`qemu-img info` for qcow2 and raw images: the same JSON and the same human text.

Only the image's own header and metadata are read; the backing chain is not
opened, so an overlay whose backing file was moved still shows its header and
the backing name it stores (which is what one needs to fix it).  Internal
snapshots (the snapshot table) and persistent bitmaps (the bitmap directory,
when the autoclear bitmaps bit says it is valid) are listed as qemu-img lists
them.

References: QEMU, qemu-img.c (img_info), block/qapi.c (bdrv_image_info_dump,
dump_qdict, dump_qlist, bdrv_snapshot_dump), block/qcow2.c
(qcow2_get_specific_info), block/qcow2-bitmap.c (qcow2_get_bitmap_info_list),
qapi/block-core.json (ImageInfo, ImageInfoSpecificQCow2, SnapshotInfo).
"""

from __future__ import annotations

import os
import time
from typing import Any

from imagebuild.container.qcow2.backing import full_backing_name, sniff_format
from imagebuild.container.qcow2.format import (
    AUTOCLEAR_BITMAPS,
    COMPAT_LAZY_REFCOUNTS,
    COMPRESSION_NAMES,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    INCOMPAT_EXTL2,
)
from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.container.qcow2.metadata import (
    MAX_BITMAP_DIRECTORY,
    Bitmap,
    Snapshot,
    bitmap_directory_location,
    parse_bitmap_directory,
)
from imagebuild.disk.device import RawFile
from imagebuild.util.sizes import format_size

NSEC = 1_000_000_000


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`qemu-img info --output=json` for a qcow2 or raw image (key order included).

    Raises OSError, ImageFormatError/UnsupportedImageError for a malformed
    header; never BackingFileMissing (the chain is not opened).
    """
    name = os.fspath(path)
    actual = os.stat(name).st_blocks * 512
    if sniff_format(name) == "raw":
        with RawFile(name) as raw:
            return {"virtual-size": raw.size, "filename": name, "format": "raw",
                    "actual-size": actual, "dirty-flag": False}
    with Qcow2Image.open(name, backing=False) as image:
        header = image.header
        data: dict[str, Any] = {"compat": "1.1" if header.version >= 3 else "0.10",
                                "compression-type": COMPRESSION_NAMES[header.compression_type]}
        if header.version >= 3:
            data["lazy-refcounts"] = bool(header.compatible_features & COMPAT_LAZY_REFCOUNTS)
        bitmaps = _bitmaps(image)
        if bitmaps:
            data["bitmaps"] = [{"flags": b.flag_names(), "name": b.name,
                                "granularity": b.granularity} for b in bitmaps]
        data["refcount-bits"] = 1 << header.refcount_order
        if header.version >= 3:
            data["corrupt"] = bool(header.incompatible_features & INCOMPAT_CORRUPT)
            data["extended-l2"] = bool(header.incompatible_features & INCOMPAT_EXTL2)
        out: dict[str, Any] = {}
        if header.backing_file and header.backing_format:
            out["backing-filename-format"] = header.backing_format
        if image.snapshots:
            out["snapshots"] = [_snapshot_json(s) for s in image.snapshots]
        out.update({"virtual-size": image.size, "filename": name,
                    "cluster-size": image.cluster_size, "format": "qcow2",
                    "actual-size": actual,
                    "format-specific": {"type": "qcow2", "data": data}})
        if header.backing_file:
            out["full-backing-filename"] = full_backing_name(name, header.backing_file)
            out["backing-filename"] = header.backing_file
        out["dirty-flag"] = bool(header.incompatible_features & INCOMPAT_DIRTY)
        return out


def _bitmaps(image: Qcow2Image) -> list[Bitmap]:
    """The persistent bitmaps, when the autoclear bitmaps bit vouches for the directory."""
    if image.version < 3 or not image.header.autoclear_features & AUTOCLEAR_BITMAPS:
        return []
    where = bitmap_directory_location(image.header)
    if where is None or not where[0]:
        return []
    count, offset, size = where
    directory = image.host.pread(min(size, MAX_BITMAP_DIRECTORY), offset)
    return parse_bitmap_directory(directory, count, image.path)


def _snapshot_json(snap: Snapshot) -> dict[str, Any]:
    """qapi SnapshotInfo in qemu-img's key order (icount only when stored)."""
    out: dict[str, Any] = {}
    if snap.icount is not None:
        out["icount"] = snap.icount
    out.update({"vm-clock-nsec": snap.vm_clock_nsec % NSEC, "name": snap.name,
                "date-sec": snap.date_sec, "date-nsec": snap.date_nsec,
                "vm-clock-sec": snap.vm_clock_nsec // NSEC, "id": snap.id,
                "vm-state-size": snap.vm_state_size})
    return out


def format_info(found: dict[str, Any]) -> str:
    """`qemu-img info` human output for an `info()` result."""
    lines = [f"image: {found['filename']}", f"file format: {found['format']}",
             f"virtual size: {format_size(found['virtual-size'])} "
             f"({found['virtual-size']} bytes)",
             f"disk size: {format_size(found['actual-size'])}"]
    if "cluster-size" in found:
        lines.append(f"cluster_size: {found['cluster-size']}")
    if "backing-filename" in found:
        name = found["backing-filename"]
        full = found["full-backing-filename"]
        lines.append(f"backing file: {name}" + (f" (actual path: {full})" if full != name else ""))
    if "backing-filename-format" in found:
        lines.append(f"backing file format: {found['backing-filename-format']}")
    if found.get("snapshots"):
        lines.append("Snapshot list:")
        lines.append(f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}"
                     f"{'ICOUNT':>11}")
        lines.extend(_snapshot_line(s) for s in found["snapshots"])
    specific = found.get("format-specific")
    if specific:
        lines.append("Format specific information:")
        _dump_dict(lines, 1, specific["data"])
    return "\n".join(lines) + "\n"


def _snapshot_line(s: dict[str, Any]) -> str:
    """One row of qemu's bdrv_snapshot_dump (the date in local time, as qemu-img)."""
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date-sec"]))
    secs = s["vm-clock-sec"]
    clock = (f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}."
             f"{s['vm-clock-nsec'] // 1_000_000:03d}")
    icount = str(s["icount"]) if "icount" in s else ""
    return (f"{s['id']:<9} {s['name']:<16} {format_size(s['vm-state-size']):>8}{date:>20}"
            f"{clock:>13}{icount:>11}")


def _scalar(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _dump_dict(lines: list[str], depth: int, data: dict[str, Any]) -> None:
    """qemu's dump_qdict: `key: value`, dashes in keys as spaces, nesting by 4 spaces."""
    pad = " " * (4 * depth)
    for key, value in data.items():
        label = key.replace("-", " ")
        if isinstance(value, dict):
            lines.append(f"{pad}{label}:")
            _dump_dict(lines, depth + 1, value)
        elif isinstance(value, list):
            lines.append(f"{pad}{label}:")
            _dump_list(lines, depth + 1, value)
        else:
            lines.append(f"{pad}{label}: {_scalar(value)}")


def _dump_list(lines: list[str], depth: int, items: list[Any]) -> None:
    """qemu's dump_qlist: `[i]:` then the item, nested or on the same line."""
    pad = " " * (4 * depth)
    for i, value in enumerate(items):
        if isinstance(value, dict):
            lines.append(f"{pad}[{i}]:")
            _dump_dict(lines, depth + 1, value)
        elif isinstance(value, list):
            lines.append(f"{pad}[{i}]:")
            _dump_list(lines, depth + 1, value)
        else:
            lines.append(f"{pad}[{i}]: {_scalar(value)}")
