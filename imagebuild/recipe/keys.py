"""Every recipe key, declared once: its type, default, bounds and meaning.

`load.py` validates a recipe against these tables (unknown keys, missing
keys, wrong types, values out of range are errors naming file and key) and
takes defaults from them; `imagebuild list --keys` prints them (`describe`).
"""

from __future__ import annotations

from typing import Any

from imagebuild.util.record import Record

REQUIRED: Any = object()  # a key without a default

# disk/fdisk and the MBR count sectors in 32 bits: 2^32 sectors of 512 bytes is 2 TiB;
# raw images are mb+1 MiB, so mb stays one below that.
MAX_MB = (1 << 32) * 512 // (1 << 20) - 1

KeyType = type | tuple[type, ...]  # the type(s) a key's value may have


class Key(Record):
    """One recipe key: `type` (a type or tuple of types), `default` (REQUIRED: none),
    `doc`; `lo`/`hi` bound an integer, `choices` a string."""

    FIELDS = ("type", "default", "doc", "lo", "hi", "choices")
    __slots__ = FIELDS

    type: KeyType
    default: Any
    doc: str
    lo: int | None
    hi: int | None
    choices: tuple[str, ...]

    def __init__(
        self,
        type: KeyType,
        default: Any,
        doc: str,
        lo: int | None = None,
        hi: int | None = None,
        choices: tuple[str, ...] = (),
    ) -> None:
        self.type = type
        self.default = default
        self.doc = doc
        self.lo = lo
        self.hi = hi
        self.choices = choices

    @property
    def required(self) -> bool:
        """True for a key without a default."""
        return self.default is REQUIRED


TOP: dict[str, Key] = {
    "description": Key(str, REQUIRED, "one line for `imagebuild list`"),
    "extends": Key(str, None, "the recipe this one overrides (a target name or a file beside it)"),
    "output": Key(str, None, "output file name, in out/ (default 9front.NAME, not inherited)"),
    "format": Key(str, REQUIRED, "container", choices=("qcow2", "raw", "iso")),
    "mb": Key(int, REQUIRED, "image size in MiB (raw images get one MiB more)", 1, MAX_MB),
    "objtype": Key(str, REQUIRED, "$objtype of the fs tree (amd64, arm64, arm, 386)"),
    "kernels": Key(list, REQUIRED, "root paths of the kernels; the first is {{ kernel }}"),
    "default": Key(bool, False, "built by a plain `./dev build`"),
    "layout": Key(dict, REQUIRED, "the partitioning steps ([layout])"),
    "fat": Key(dict, REQUIRED, "the boot partition ([fat])"),
    "render": Key(dict, {}, "boot file name -> template name"),
    "vars": Key(dict, {}, "template variables per namespace ([vars.NS])"),
    "raw_write": Key(list, [], "files written at byte offsets after partitioning"),
    "fs": Key(dict, {}, "the fs partition ([fs])"),
    "iso": Key(dict, None, "an ISO 9660 target ([iso], the mkfile's %.pc.iso): no disk keys"),
}
# keys an [iso] recipe neither needs nor may have
DISK_ONLY = ("mb", "layout", "fat")
ISO: dict[str, Key] = {
    "volume": Key(str, REQUIRED, "volume name (disk/mk9660 -v)"),
    "boot_image": Key(str, REQUIRED, "tree path of the BIOS boot image (mk9660 -B)"),
    "efi_boot_image": Key(str, None, "tree path of the EFI FAT image (mk9660 -E)"),
    "plan9ini": Key(str, "cfg/plan9.ini", "tree path of plan9.ini: bootfile= replaced, --set"),
    "hybrid_loader": Key(str, None, "root path of 9boothyb: with it, the hybrid ESP tail"),
    "hybrid_mbr": Key(str, None, "root path of the tail's MBR code (disk/mbr -m)"),
    "hybrid_pbs": Key(str, None, "root path of the ESP's boot program (disk/format -b)"),
    "hybrid_efi": Key(list, [], "root globs of the ESP's efi/boot files"),
}
LAYOUT: dict[str, Key] = {
    "mbr": Key(str, None, "root path of the MBR boot code (disk/mbr -m)"),
    "fdisk": Key((str, list), REQUIRED, '"auto" (fdisk -baw) or the commands piped to fdisk -b'),
    "prep": Key(list, REQUIRED, "the partition names prep -a makes"),
}
FAT: dict[str, Key] = {
    "partition": Key(str, REQUIRED, "the partition disk/format formats"),
    "pbs": Key(str, None, "root path of the boot program (disk/format -b)"),
    # the BPB's reserved sector count is 16 bits
    "reserved": Key(int, 1, "reserved sectors (disk/format -r)", 1, 0xFFFF),
    "files": Key(list, REQUIRED, "root paths or rendered names, in order"),
}
FS: dict[str, Key] = {
    "type": Key(str, "hjfs", "file system of the fs partition",
                choices=("hjfs", "gefs", "cwfs", "none")),
    "protos": Key(list, None, "root paths of the proto files (default: the mkfile's)"),
    "binds": Key(dict, {}, "fs path -> root directory or list of them (a union)"),
    "git_bind": Key(str, None, 'where a git checkout tree goes ("" for nowhere)'),
    "disk": Key(str, "sdC0", "sd(3) name of the disk on the booted machine (cwfs's config)"),
    "strict": Key(bool, False, "a source the protos name that does not exist is an error"),
}
RAW_WRITE: dict[str, Key] = {
    "file": Key(str, REQUIRED, "root path of the file"),
    "offset": Key(int, REQUIRED, "byte offset in the image", 0, None),
}


TABLES: dict[str, dict[str, Key]] = {
    "": TOP, "layout.": LAYOUT, "fat.": FAT, "fs.": FS, "raw_write[].": RAW_WRITE, "iso.": ISO,
}
_NAMES = {str: "string", int: "integer", bool: "boolean", list: "list", dict: "table"}


def describe() -> list[str]:
    """One line per key: dotted name, type, default or `required`, bounds, meaning."""
    lines = []
    for prefix, table in TABLES.items():
        for name, key in table.items():
            kinds = key.type if isinstance(key.type, tuple) else (key.type,)
            kind = "|".join(_NAMES[k] for k in kinds)
            if key.choices:
                kind = "|".join(key.choices)
            if key.lo is not None:
                kind += f" {key.lo}..{key.hi if key.hi is not None else ''}"
            default = ("required" if key.required else
                       "" if key.default in (None, {}, []) else f"default {key.default!r}")
            lines.append(f"{prefix + name:<20} {kind:<24} {default:<18} {key.doc}".rstrip())
    return lines
