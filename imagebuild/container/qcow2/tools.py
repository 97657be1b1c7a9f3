"""qemu-img's map for qcow2 and raw images.

Output dictionaries use qemu-img's JSON field names (`qemu-img info
--output=json`, `qemu-img map --output=json`) so scripts can switch between
the two tools.

References: QEMU, qemu-img.c (img_info, img_map, dump_map_entry, img_convert),
qapi/block-core.json (ImageInfo, ImageInfoSpecificQCow2, MapEntry).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from imagebuild.container.qcow2.backing import full_backing_name
from imagebuild.container.qcow2.image import Qcow2Image, open_image
from imagebuild.container.qcow2.mapping import ClusterKind
from imagebuild.disk.device import RawFile


# -- map ---------------------------------------------------------------------------------------
def _raw_map(raw: RawFile, start: int, end: int, depth: int) -> Iterator[dict[str, Any]]:
    """Data and holes of a raw file (SEEK_DATA/SEEK_HOLE), as file-posix reports them."""
    fd = raw.fileno()
    pos = start
    limit = min(end, raw.size)
    while pos < limit:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            data = limit
        data = min(data, limit)
        if data > pos:
            yield {"start": pos, "length": data - pos, "depth": depth, "present": True,
                   "zero": True, "data": False, "offset": pos}
        if data >= limit:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), limit)
        yield {"start": data, "length": hole - data, "depth": depth, "present": True,
               "zero": False, "data": True, "offset": data}
        pos = hole
    if limit < end:
        yield {"start": limit, "length": end - limit, "depth": depth, "present": False,
               "zero": True, "data": False}


def _layer_map(image: Qcow2Image | RawFile, start: int, end: int, depth: int,
               ) -> Iterator[dict[str, Any]]:
    if isinstance(image, RawFile):
        yield from _raw_map(image, start, end, depth)
        return
    limit = min(end, image.size)
    for ext in image.extents(start, limit - start):
        base = {"start": ext.start, "length": ext.length, "depth": depth}
        if ext.kind is ClusterKind.NORMAL:
            yield {**base, "present": True, "zero": False, "data": True, "offset": ext.host}
        elif ext.kind is ClusterKind.COMPRESSED:
            yield {**base, "present": True, "zero": False, "data": True}  # no offset
        elif ext.kind is ClusterKind.ZERO:
            offset = {"offset": ext.host} if ext.host else {}
            yield {**base, "present": True, "zero": True, "data": False, **offset}
        elif image.backing is not None:
            assert isinstance(image.backing, (Qcow2Image, RawFile))
            yield from _layer_map(image.backing, ext.start, ext.start + ext.length, depth + 1)
        else:
            yield {**base, "present": False, "zero": True, "data": False}
    if limit < end:
        yield {"start": limit, "length": end - limit, "depth": depth, "present": False,
               "zero": True, "data": False}


def _mergeable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key in ("depth", "present", "zero", "data"):
        if a[key] != b[key]:
            return False
    if "offset" in a or "offset" in b:
        return "offset" in a and "offset" in b and a["offset"] + a["length"] == b["offset"]
    return True


def map_image(target: str | os.PathLike[str] | Qcow2Image | RawFile) -> list[dict[str, Any]]:
    """`qemu-img map --output=json`: extents of the whole chain, merged like qemu-img."""
    owned = not isinstance(target, (Qcow2Image, RawFile))
    image = open_image(target) if not isinstance(target, (Qcow2Image, RawFile)) else target
    try:
        merged: list[dict[str, Any]] = []
        for entry in _layer_map(image, 0, image.size, 0):
            if merged and _mergeable(merged[-1], entry):
                merged[-1]["length"] += entry["length"]
            else:
                merged.append(entry)
        return merged
    finally:
        if owned:
            image.close()


def format_map(path: str, extents: list[dict[str, Any]]) -> str:
    """`qemu-img map` human output: the extents that have data at a file offset."""
    def hexa(value: int) -> str:
        return f"{value:#x}" if value else "0"

    names = _layer_names(path)
    lines = [f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File"]
    for e in extents:
        if e["data"] and "offset" in e:
            lines.append(f"{hexa(e['start']):<16}{hexa(e['length']):<16}"
                         f"{hexa(e['offset']):<16}{names[min(e['depth'], len(names) - 1)]}")
    return "\n".join(lines) + "\n"


def _layer_names(path: str) -> list[str]:
    names = [path]
    image = open_image(path)
    try:
        layer: Qcow2Image | RawFile | None = image
        while isinstance(layer, Qcow2Image) and layer.header.backing_file:
            names.append(full_backing_name(names[-1], layer.header.backing_file))
            backing = layer.backing
            layer = backing if isinstance(backing, (Qcow2Image, RawFile)) else None
    finally:
        image.close()
    return names
