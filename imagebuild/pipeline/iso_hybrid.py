"""The hybrid tail of the mkfile's `%.pc.iso`, run when the tree has /386/9boothyb:

    dd -if /dev/zero -bs 2048 -count 1024 >> $target
    disk/partfs -m /n/partfs $target
    disk/mbr -m /n/src9/386/mbr $disk/data
    {echo a p1 '$-1' '$'; echo t p1 ESP; echo A p1; echo w; echo q} | disk/fdisk -b $disk/data
    disk/format -b /n/src9/386/pbs -xd -t hard $disk/esp
    dossrv; cp 9boothyb /n/esp/9bootfat; mkdir efi efi/boot; cp /n/src9/386/boot*.efi efi/boot

so the same file boots from a USB stick: BIOS -> mbr -> pbs -> 9bootfat (9boothyb,
which reads the ISO 9660 tree through the disk), or EFI from the ESP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imagebuild.errors import InputError

TAIL_BYTES = 2048 * 1024  # dd -bs 2048 -count 1024
FDISK_SCRIPT = "a p1 $-1 $\nt p1 ESP\nA p1\nw\nq\n"


def _read(root: Path, rel: str | None, what: str) -> bytes:
    if rel is None:
        raise InputError(f"the hybrid tail needs {what}, and the recipe names none")
    try:
        return (root / rel).read_bytes()
    except OSError as e:
        raise InputError(f"{root / rel}: cannot read {what}: {e.strerror}") from None


def hybrid_inputs(plan: Any) -> tuple[bytes, bytes, bytes, list[tuple[str, bytes]]]:
    """mbr, pbs, 9boothyb and the efi/boot files, read before anything is written."""
    iso = plan.recipe.iso
    root: Path = plan.root
    mbr = _read(root, iso.hybrid_mbr, "the MBR boot code (iso.hybrid_mbr)")
    pbs = _read(root, iso.hybrid_pbs, "the partition boot sector (iso.hybrid_pbs)")
    loader = _read(root, iso.hybrid_loader, "9boothyb (iso.hybrid_loader)")
    efi: list[tuple[str, bytes]] = []
    for pattern in iso.hybrid_efi:
        for path in sorted(root.glob(pattern)):  # rc's glob order
            efi.append((f"efi/boot/{path.name}", path.read_bytes()))
    return mbr, pbs, loader, efi


def add_hybrid_tail(plan: Any, image: Path) -> None:
    """Append the tail and write the MBR, the ESP and its files into `image` (the ISO)."""
    from imagebuild.disk.device import BlockDevice, PartFS, RawFile
    from imagebuild.fs.fat.format import format_fat
    from imagebuild.fs.fat.tree import add_tree
    from imagebuild.partition import fdisk, mbr

    code, pbs, loader, efi = hybrid_inputs(plan)
    os.truncate(image, image.stat().st_size + TAIL_BYTES)  # the appended zeros
    with RawFile(image, writable=True) as raw:
        disk = BlockDevice(raw, name=image.name)
        parts = PartFS(disk)
        mbr.install_bootcode(disk, code, source=str(plan.recipe.iso.hybrid_mbr))
        fdisk.fdisk_script(parts, FDISK_SCRIPT, source=f"{plan.recipe.path} (hybrid fdisk)")
        esp = parts["esp"]
        format_fat(esp, [], pbs=pbs, pbs_source=str(plan.recipe.iso.hybrid_pbs), xflag=True,
                   disk_type="hard", timestamp=plan.now)
        add_tree(esp, [("9bootfat", loader), *efi], timestamp=plan.now)
        raw.flush()
