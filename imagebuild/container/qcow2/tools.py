"""qemu-img's info, map and convert for qcow2 and raw images.

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
from imagebuild.container.qcow2.format import (
    DEFAULT_CLUSTER_SIZE,
)
from imagebuild.container.qcow2.hostfile import is_zero
from imagebuild.container.qcow2.image import Qcow2Image, open_image
from imagebuild.container.qcow2.mapping import ClusterKind
from imagebuild.disk.device import RawFile
from imagebuild.errors import ImageBuildError, UnsupportedImageError

CHUNK = 8 << 20  # bytes per read/write while converting


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


# -- convert -----------------------------------------------------------------------------------
def data_extents(image: Qcow2Image | RawFile) -> Iterator[tuple[int, int]]:
    """(start, length) of the guest ranges that may hold non-zero data, through the chain."""
    run_start = run_end = -1
    for e in map_image(image):
        if not e["data"]:
            continue
        if e["start"] == run_end:
            run_end += e["length"]
            continue
        if run_end > run_start:
            yield run_start, run_end - run_start
        run_start, run_end = e["start"], e["start"] + e["length"]
    if run_end > run_start:
        yield run_start, run_end - run_start


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
            output_format: str = "qcow2", compress: bool = False,
            cluster_size: int = DEFAULT_CLUSTER_SIZE) -> None:
    """`qemu-img convert [-c] -O FORMAT SRC DST`: the guest data of SRC (and its backing
    chain) into a standalone DST; raw output is sparse, qcow2 output allocates only
    non-zero clusters (compressed with -c)."""
    source = open_image(src)
    target = os.fspath(dst)
    if output_format not in ("qcow2", "raw"):
        source.close()
        raise UnsupportedImageError(f"{target}: output format {output_format!r} (qcow2 or raw)")
    if compress and output_format != "qcow2":
        source.close()
        raise ImageBuildError(f"{target}: compression (-c) needs output format qcow2")
    from imagebuild.pipeline.output import atomic_output

    try:
        with atomic_output(target) as tmp:
            if output_format == "raw":
                _convert_to_raw(source, tmp)
            else:
                _convert_to_qcow2(source, tmp, compress, cluster_size)
    finally:
        source.close()


def aligned_ranges(image: Qcow2Image | RawFile, align: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges covering every data extent, widened to multiples of
    `align` and merged where widening makes them touch or overlap: each aligned
    block (cluster) lies in exactly one range, however many extents share it."""
    run_start = run_end = -1
    for start, length in data_extents(image):
        first = start // align * align
        end = min(image.size, -(-(start + length) // align) * align)
        if first <= run_end:
            run_end = max(run_end, end)
            continue
        if run_end > run_start:
            yield run_start, run_end
        run_start, run_end = first, end
    if run_end > run_start:
        yield run_start, run_end


def _chunks(image: Qcow2Image | RawFile, align: int) -> Iterator[tuple[int, bytes]]:
    for first, end in aligned_ranges(image, align):
        for pos in range(first, end, CHUNK):
            n = min(CHUNK, end - pos)
            yield pos, image.pread(n, pos)


def _convert_to_raw(source: Qcow2Image | RawFile, tmp: os.PathLike[str]) -> None:
    block = 65536
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, source.size)
        for pos, data in _chunks(source, block):
            view = memoryview(data)
            for at in range(0, len(view), block):
                piece = view[at : at + block]
                if not is_zero(piece):
                    os.pwrite(fd, piece, pos + at)
        os.fsync(fd)
    finally:
        os.close(fd)


def _convert_to_qcow2(source: Qcow2Image | RawFile, tmp: os.PathLike[str], compress: bool,
                      cluster_size: int) -> None:
    with Qcow2Image.create(tmp, source.size, cluster_size=cluster_size) as out:
        for pos, data in _chunks(source, cluster_size):
            if not compress:
                out.pwrite(data, pos)
                continue
            view = memoryview(data)
            for at in range(0, len(view), cluster_size):
                piece = view[at : at + cluster_size]
                if not is_zero(piece):
                    out.write_compressed((pos + at) // cluster_size, bytes(piece))
