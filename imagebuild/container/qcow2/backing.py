"""Backing chains: where a backing file name points, which files a chain holds.

A backing file name is stored as given; a relative one is relative to the
directory of the image that names it (QEMU's path_combine).  Files in a chain
are identified by device and inode (`FileId`), not by name, so a loop or an
output that is part of its own chain is found however it is spelled (symlinks,
hard links, `..`).

References: QEMU, block.c (bdrv_get_full_backing_filename, path_combine,
bdrv_open_backing_file), docs/interop/qcow2.txt ("Header": backing_file_offset).
"""

from __future__ import annotations

import os
from typing import Protocol

from imagebuild.container.qcow2.format import MAGIC
from imagebuild.errors import ImageBuildError

FileId = tuple[int, int]  # (st_dev, st_ino)

MAX_CHAIN_DEPTH = 32


class BackingFileMissing(ImageBuildError):
    """An image names a backing file that does not exist (the message names both)."""


class Layer(Protocol):
    """An open image in a chain: its descriptor (RawFile, Qcow2Image)."""

    def fileno(self) -> int:
        """The open file's descriptor."""
        ...


def chain_ids(image: Layer) -> set[FileId]:
    """(device, inode) of `image` and of every file in its open backing chain."""
    ids: set[FileId] = set()
    layer: Layer | None = image
    while layer is not None:
        ids.add(fd_id(layer.fileno()))
        layer = getattr(layer, "backing", None)  # a raw file ends the chain
    return ids


def missing_backing(image_path: str, name: str, resolved: str) -> BackingFileMissing:
    """The error for image `image_path` whose backing file `name` is not at `resolved`."""
    where = "" if resolved == name else f" (looked for {resolved})"
    return BackingFileMissing(
        f"{image_path}: backing file {name!r} not found{where}; the overlay is unreadable "
        f"until it is there (qcow2 info shows the header)"
    )


def resolve_backing(image_path: str, name: str) -> str:
    """The path of backing file `name` named by the image at `image_path`."""
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(os.path.abspath(image_path)), name)


def full_backing_name(image_path: str, name: str) -> str:
    """qemu-img info's full-backing-filename: `name` joined to the image's directory as
    given (not made absolute), like QEMU's path_combine."""
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(image_path), name)


def file_id(path: str | os.PathLike[str]) -> FileId | None:
    """(device, inode) of an existing file, None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def fd_id(fd: int) -> FileId:
    """(device, inode) of an open file."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def sniff_format(path: str | os.PathLike[str]) -> str:
    """'qcow2' if the file starts with the QCOW magic, else 'raw'.

    Raises OSError when the file cannot be opened.
    """
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == MAGIC else "raw"
