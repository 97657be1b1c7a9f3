"""Per-target customization as a QCOW2 overlay over a built image.

`imagebuild customize BASE -o OUT --set plan9.console=1 --file NAME=PATH`
writes OUT as a qcow2 overlay whose backing file is BASE.  It reads the boot
partition's files back, edits them, and writes only the files that changed
into the FAT in place (imagebuild.fs.fat.update): the boot sector, other
files, subdirectories and the volume serial stay as BASE has them, so the
overlay holds a few clusters (the edited file's data, the directory, a FAT
sector) and everything else is read through from BASE.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import ImageBuildError, InputError
from imagebuild.pipeline.output import atomic_output, check_output
from imagebuild.pipeline.plan import place_files, read_file_options, source_date_epoch
from imagebuild.recipe.render import parse_set

BOOT_PARTITIONS = ("9fat", "dos", "esp")
# --set namespace -> the boot file it edits
EDITED_FILES = {"plan9": "plan9.ini", "config": "config.txt", "cmdline": "cmdline.txt"}


def set_ini_key(text: str, key: str, value: str) -> str:
    """plan9.ini: replace the first `key=` line, or append one."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split("=", 1)[0].strip() == key and "=" in line:
            lines[i] = f"{key}={value}"
            break
    else:
        lines.append(f"{key}={value}")
    return "".join(line + "\n" for line in lines)


def set_config_key(text: str, section: str, key: str, value: str) -> str:
    """config.txt: set `key=value` in `[section]`, adding the key or section as needed."""
    lines = text.splitlines()
    current, insert_at = None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if current == section:
                break
            current = stripped[1:-1]
            if current == section:
                insert_at = i + 1
            continue
        if current == section:
            insert_at = i + 1
            if stripped.split("=", 1)[0].strip() == key and "=" in stripped:
                lines[i] = f"{key}={value}"
                return "".join(line + "\n" for line in lines)
    if insert_at is None:
        lines += [f"[{section}]", f"{key}={value}"]
    else:
        lines.insert(insert_at, f"{key}={value}")
    return "".join(line + "\n" for line in lines)


def set_cmdline_key(text: str, key: str, value: str) -> str:
    """cmdline.txt: one line of space-separated key=value words."""
    words = text.split()
    for i, word in enumerate(words):
        if word.split("=", 1)[0] == key:
            words[i] = f"{key}={value}"
            break
    else:
        words.append(f"{key}={value}")
    return " ".join(words) + "\n"


def edit_files(files: list[tuple[str, bytes]], sets: Sequence[str], adds: Sequence[str]) -> None:
    """Apply --set and --file to the boot partition's (name, data) list, in place."""
    index = {name.lower(): i for i, (name, _) in enumerate(files)}
    for text in sets:
        path, value = parse_set(text)
        fname = EDITED_FILES.get(path[0])
        if fname is None:
            raise InputError(f"--set {text}: expected plan9.KEY, config.SECTION.KEY or cmdline.KEY")
        if fname.lower() not in index:
            raise InputError(f"--set {text}: the boot partition has no {fname}")
        i = index[fname.lower()]
        name, data = files[i]
        content = data.decode("utf-8", errors="replace")
        if path[0] == "config":
            if len(path) != 3:
                raise InputError(f"--set {text}: expected config.SECTION.KEY=VALUE")
            content = set_config_key(content, path[1], path[2], value)
        elif len(path) != 2:
            raise InputError(f"--set {text}: expected {path[0]}.KEY=VALUE")
        elif path[0] == "plan9":
            content = set_ini_key(content, path[1], value)
        else:
            content = set_cmdline_key(content, path[1], value)
        files[i] = (name, content.encode())
    extra, unreadable = read_file_options(adds)
    if unreadable:
        raise InputError(f"--file: cannot read {', '.join(unreadable)}")
    place_files(files, extra)


def customize(base: Path, output: Path, *, sets: Sequence[str], files: Sequence[str],
              sync: bool = False) -> None:
    """Write `output`, a qcow2 overlay of `base` with --set/--file edits to the boot partition.

    Raises InputError (output would replace base, bad --set/--file), ImageBuildError
    (no boot partition) and ImageFormatError for an unreadable base.
    """
    from imagebuild.container.qcow2.image import Qcow2Image, open_image, refuse_output_in_chain
    from imagebuild.fs.fat.format import FatFile, FatVolume
    from imagebuild.fs.fat.update import update_root_files
    from imagebuild.readback import partitions

    check_output(output)
    if output.resolve() == base.resolve():
        raise InputError(f"{output}: the overlay must not replace its own backing file")
    refuse_output_in_chain(output, base)  # nor any file its backing chain reads
    with open_image(base) as image:
        base_format = image.format
        disk = BlockDevice(image.storage, name=base.name)
        parts = partitions(disk)
        boot = next((n for n in BOOT_PARTITIONS if n in parts), None)
        if boot is None:
            raise ImageBuildError(f"{base}: no boot partition ({', '.join(BOOT_PARTITIONS)})")
        start, end = parts[boot].start, parts[boot].start + parts[boot].secs
        volume = FatVolume(parts[boot])
        entries = [e for e in volume.listdir("/") if not e.is_dir]
        content = [(e.name, volume.read(e.name)) for e in entries]
        stamp = source_date_epoch()
        timestamp = stamp if stamp is not None else (
            int(entries[0].mtime.timestamp()) if entries else 0
        )
        size = image.storage.size
    edit_files(content, sets, files)

    backing = os.path.relpath(base.resolve(), output.resolve().parent)
    with atomic_output(output, sync=sync) as tmp, Qcow2Image.create(
        tmp, size, backing_file=backing, backing_format=base_format, sync=sync
    ) as overlay:
        overlay.skip_unchanged = True  # rewriting what BASE already holds allocates nothing
        view = BlockDevice(overlay.data, name=output.name)
        update_root_files(view.slice(start, end, boot),
                          [FatFile(name, data) for name, data in content], timestamp=timestamp)
