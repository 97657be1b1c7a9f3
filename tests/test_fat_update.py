"""Root files changed in place (fs.fat.update), on FATs mkfs.fat wrote, read back with mtools
and fsck.fat; and customize of an image whose boot FAT has a subdirectory (9.3)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuild.disk.device import BlockDevice, RawFile
from imagebuild.fs.fat.format import FatError, FatFile, FatVolume
from imagebuild.fs.fat.update import update_root_files

pytestmark = pytest.mark.skipif(
    shutil.which("mkfs.fat") is None or shutil.which("mcopy") is None,
    reason="needs mkfs.fat and mtools",
)
ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")
STAMP = 1700000000


def run(*args: str) -> bytes:
    return subprocess.run(args, env=ENV, check=True, capture_output=True).stdout


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def foreign_fat(tmp_path: Path, fat_bits: int) -> tuple[Path, int]:
    """A FAT from mkfs.fat with serial 0xDEADBEEF, a subdirectory and two root files."""
    sectors = {12: 4000, 16: 40000, 32: 140000}[fat_bits]
    image = tmp_path / f"fat{fat_bits}.img"
    run("mkfs.fat", "-C", "-F", str(fat_bits), "-i", "DEADBEEF", "-s", "1", str(image),
        str(sectors // 2))
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "plan9.ini").write_bytes(b"bootfile=9pc64\n")
    (src / "BOOTX64.EFI").write_bytes(payload(5000, 1))
    (src / "kernel").write_bytes(payload(20000, 2))
    run("mmd", "-i", str(image), "::/EFI")
    run("mcopy", "-i", str(image), str(src / "BOOTX64.EFI"), "::/EFI/BOOTX64.EFI")
    run("mcopy", "-i", str(image), str(src / "plan9.ini"), str(src / "kernel"), "::/")
    return image, sectors


def read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def changed_sectors(a: Path, b: Path, chunk: int = 1 << 20) -> set[int]:
    """The 512-byte sectors where two equally long files differ, a chunk at a time (the
    images are disks of several GiB: neither is read whole)."""
    changed: set[int] = set()
    with a.open("rb") as fa, b.open("rb") as fb:
        at = 0
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            assert len(x) == len(y)
            if not x:
                return changed
            if x != y:
                changed |= {(at + i) // 512 for i in range(0, len(x), 512)
                            if x[i : i + 512] != y[i : i + 512]}
            at += len(x)


def fsck_clean(image: Path) -> None:
    out = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("fat_bits", [12, 16, 32])
def test_update_changes_only_the_named_files(tmp_path: Path, fat_bits: int) -> None:
    image, sectors = foreign_fat(tmp_path, fat_bits)
    before = image.read_bytes()
    storage = RawFile(image, writable=True)
    dev = BlockDevice(storage).slice(0, sectors, "esp")
    grown = payload(30000, 3)  # more clusters than the kernel had
    update_root_files(dev, [FatFile("plan9.ini", b"bootfile=9pc64\nconsole=0\n"),
                            FatFile("kernel", grown),
                            FatFile("A long file name.txt", b"new\n"),
                            FatFile("EXTRA", b"")], timestamp=STAMP)
    storage.close()
    after = image.read_bytes()
    assert after[:512] == before[:512]  # boot sector: serial, label, BPB untouched
    assert after[0x27:0x2B] == before[0x27:0x2B] or after[0x43:0x47] == before[0x43:0x47]
    fsck_clean(image)
    assert run("mtype", "-i", str(image), "::/plan9.ini") == b"bootfile=9pc64\nconsole=0\n"
    assert run("mtype", "-i", str(image), "::/kernel") == grown
    assert run("mtype", "-i", str(image), "::/A long file name.txt") == b"new\n"
    assert run("mtype", "-i", str(image), "::/EFI/BOOTX64.EFI") == payload(5000, 1)
    volume = FatVolume(BlockDevice(RawFile(image)).slice(0, sectors, "esp"))
    assert volume.read("/EXTRA") == b""
    # shrinking frees the surplus clusters, and unchanged files are not touched
    storage = RawFile(image, writable=True)
    dev = BlockDevice(storage).slice(0, sectors, "esp")
    update_root_files(dev, [FatFile("kernel", b"small"),
                            FatFile("plan9.ini", b"bootfile=9pc64\nconsole=0\n")],
                      timestamp=STAMP + 100)
    storage.close()
    fsck_clean(image)
    assert run("mtype", "-i", str(image), "::/kernel") == b"small"


def test_update_refuses_before_writing(tmp_path: Path) -> None:
    image, sectors = foreign_fat(tmp_path, 16)
    before = image.read_bytes()
    storage = RawFile(image, writable=True)
    dev = BlockDevice(storage).slice(0, sectors, "esp")
    with pytest.raises(FatError, match="directory of that name"):
        update_root_files(dev, [FatFile("plan9.ini", b"x"), FatFile("efi", b"x")],
                          timestamp=STAMP)
    with pytest.raises(FatError, match="free clusters"):
        update_root_files(dev, [FatFile("plan9.ini", b"x"),
                                FatFile("huge", bytes(sectors * 512))], timestamp=STAMP)
    with pytest.raises(FatError, match="cannot hold"):
        update_root_files(dev, [FatFile("a:b", b"x")], timestamp=STAMP)
    storage.close()
    assert image.read_bytes() == before


def test_update_fills_a_fixed_root_and_then_refuses(tmp_path: Path) -> None:
    image, sectors = foreign_fat(tmp_path, 12)  # mkfs.fat: 512 root entries... use many
    storage = RawFile(image, writable=True)
    dev = BlockDevice(storage).slice(0, sectors, "esp")
    free = FatVolume(dev).params.root_entries - 4  # plan9.ini, kernel, EFI, and one spare
    update_root_files(dev, [FatFile(f"F{i}", b"") for i in range(free)], timestamp=STAMP)
    with pytest.raises(FatError, match="root directory is full"):
        update_root_files(dev, [FatFile("last", b""), FatFile("one more", b"")],
                          timestamp=STAMP)
    storage.close()
    fsck_clean(image)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_customize_keeps_subdirectories_and_serial(
    built: dict[str, Path], tmp_path: Path, sde: int
) -> None:
    """9.3: the overlay's FAT keeps /EFI, the volume serial and everything not asked."""
    from imagebuild.pipeline.customize import customize
    from imagebuild.readback import partitions

    raw = tmp_path / "base.img"
    run("qemu-img", "convert", "-O", "raw", str(built["amd64.qcow2"]), str(raw))
    with RawFile(raw) as storage:
        part = partitions(BlockDevice(storage))["9fat"]
        offset = part.start * 512
    at = f"{raw}@@{offset}"
    efi = tmp_path / "BOOTX64.EFI"
    efi.write_bytes(payload(9000, 4))
    run("mmd", "-i", at, "::/EFI")
    run("mcopy", "-i", at, str(efi), "::/EFI/BOOTX64.EFI")
    run("mlabel", "-i", at, "-N", "1234abcd", "::NINEFAT")
    serial = read_at(raw, offset + 0x27, 4)
    assert serial == bytes.fromhex("cdab3412")
    base = tmp_path / "base.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(raw), str(base))

    overlay = tmp_path / "custom.qcow2"
    customize(base, overlay, sets=["plan9.console=1"], files=[])
    flat = tmp_path / "flat.img"
    run("qemu-img", "convert", "-O", "raw", str(overlay), str(flat))
    at = f"{flat}@@{offset}"
    assert run("mtype", "-i", at, "::/EFI/BOOTX64.EFI") == efi.read_bytes()
    assert run("mtype", "-i", at, "::/plan9.ini").endswith(b"console=1\n")
    assert read_at(flat, offset + 0x27, 4) == serial
    assert b"NINEFAT" in run("mlabel", "-i", at, "-s", "::")
    # only the boot partition's changed sectors differ from the base
    assert raw.stat().st_size == flat.stat().st_size
    changed = changed_sectors(raw, flat)
    assert changed and all(part.start <= s < part.start + part.secs for s in changed)
    assert len(changed) <= 4  # plan9.ini's cluster (8 sectors, 1 differs), its entry
    info = json.loads(run("qemu-img", "info", "--output=json", str(overlay)))
    assert info["backing-filename"].endswith("base.qcow2")
