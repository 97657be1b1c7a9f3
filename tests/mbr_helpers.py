"""Disks for the mbr/fdisk/prep tests: the dist mkfile's steps over any Storage."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagebuild.disk.device import BlockDevice, PartFS, RawFile
from imagebuild.partition import fdisk, mbr, prep
from imagebuild.partition.prep import Plan9Partition
from imagebuild.partition.sector0 import Tentry

MiB = 1 << 20
GiB = 1 << 30

# sys/lib/dist/mkfile: the fdisk scripts of the pi and reform-like targets.
PI_SCRIPT = "a p1 . .+100M\nt p1 FAT32\na p2 . $\nt p2 PLAN9\nA p1\np\nw\nq\n"
REFORM_SCRIPT = "a p1 4M 100M\nt p1 FAT32\na p2 . $\nt p2 PLAN9\nA p1\np\nw\nq\n"

STORAGE_KINDS = ("raw", "sparse", "qcow2")


class SparseStorage:
    """Storage keeping only written 64 KiB chunks, so a 500 GiB disk costs nothing."""

    CHUNK = 1 << 16

    def __init__(self, size: int) -> None:
        self._size = size
        self.chunks: dict[int, bytearray] = {}

    @property
    def size(self) -> int:
        return self._size

    def pread(self, size: int, offset: int) -> bytes:
        out = bytearray(size)
        pos = offset
        while pos < offset + size:
            index, within = divmod(pos, self.CHUNK)
            n = min(self.CHUNK - within, offset + size - pos)
            chunk = self.chunks.get(index)
            if chunk is not None:
                out[pos - offset : pos - offset + n] = chunk[within : within + n]
            pos += n
        return bytes(out)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        view = memoryview(bytes(data))
        pos = offset
        while pos < offset + len(view):
            index, within = divmod(pos, self.CHUNK)
            n = min(self.CHUNK - within, offset + len(view) - pos)
            chunk = self.chunks.setdefault(index, bytearray(self.CHUNK))
            chunk[within : within + n] = view[pos - offset : pos - offset + n]
            pos += n
        return len(view)


@contextmanager
def open_disk(kind: str, size: int, tmp_path: Path) -> Iterator[PartFS]:
    """A blank disk of `size` bytes as partfs would serve it: a raw file, memory or qcow2."""
    if kind == "raw":
        with RawFile.create(tmp_path / "disk.img", size) as raw:
            yield PartFS(BlockDevice(raw))
    elif kind == "sparse":
        yield PartFS(BlockDevice(SparseStorage(size)))
    elif kind == "qcow2":
        from imagebuild.container.qcow2.image import Qcow2Image

        image = Qcow2Image.create(tmp_path / "disk.qcow2", size)
        try:
            yield PartFS(BlockDevice(image.data))
        finally:
            image.close()
    else:
        raise ValueError(kind)


def make_layout(
    parts: PartFS, target: str
) -> tuple[list[Tentry], list[Plan9Partition]]:
    """The %.disk rule's partitioning steps for `target` (mkfile order, default boot code)."""
    data = parts["data"]
    mbr.install_bootcode(data)  # disk/mbr $d/data
    if target == "amd64":
        mbr.install_bootcode(data, bytes(512), source="386/mbr")  # disk/mbr -m /386/mbr
    if target in ("amd64", "generic"):
        entries = fdisk.fdisk_auto(parts)  # disk/fdisk -baw $d/data
        table = prep.prep_auto(parts, ["9fat", "nvram", "fs"])  # disk/prep -bw -a^(9fat nvram fs)
    else:
        script = PI_SCRIPT if target == "pi" else REFORM_SCRIPT
        entries = fdisk.fdisk_script(parts, script)  # disk/fdisk -b $d/data < script
        table = prep.prep_auto(parts, ["nvram", "fs"])  # disk/prep -bw -a^(nvram fs)
    return entries, table


def sfdisk_dump(path: Path) -> list[dict[str, str]]:
    """`sfdisk -d IMG`: one dict per partition line (start, size, type, bootable)."""
    out = subprocess.run(["sfdisk", "-d", str(path)], check=True, capture_output=True, text=True)
    rows = []
    for line in out.stdout.splitlines():
        if " : " not in line:
            continue
        _, fields = line.split(" : ", 1)
        row: dict[str, str] = {}
        for field in fields.split(","):
            field = field.strip()
            key, _, value = field.partition("=")
            row[key.strip()] = value.strip() if value else "yes"
        rows.append(row)
    return rows


def parted_print(path: Path) -> list[list[str]]:
    """`parted -s IMG unit s print`: the rows of the partition list, split on blanks."""
    out = subprocess.run(
        ["parted", "-s", str(path), "unit", "s", "print"], check=True, capture_output=True,
        text=True,
    )
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Number"))
    return [line.split() for line in lines[header + 1 :] if line.strip()]
