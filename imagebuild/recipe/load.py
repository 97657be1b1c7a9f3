"""Recipes: one TOML file per disk target of 9front's sys/lib/dist/mkfile.

A recipe says what the mkfile's `%.TARGET` rule and the matching branch of
its `%.disk` rule do: the image size (`mb`), the container, the boot code,
the fdisk and prep steps, the FAT partition and its files, the boot files
rendered from templates, and raw writes done after partitioning (reform's
flash.bin).  A recipe may `extend` another and override a few keys.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagebuild.errors import ImageBuildError, RecipeError, show_path
from imagebuild.recipe import keys
from imagebuild.recipe.keys import Key
from imagebuild.util.files import read_input
from imagebuild.util.record import Record

# The stock recipes ship inside the package (imagebuild/recipes/*.toml), so a wheel has them.
# (a path beside the code rather than importlib.resources, which costs start-up; the
# package is always installed as files; __file__ is absolute, and not resolved: that
# would lstat every directory above it at every start)
RECIPE_DIR = Path(__file__).parent.parent / "recipes"
RECIPE_SUFFIX = ".toml"
MAX_EXTENDS_DEPTH = 8

MiB = 1 << 20
MAX_RECIPE_BYTES = 1 << 20
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "a table"}
FS_TYPES = keys.FS["type"].choices

# The dist mkfile's %.disk rule: `disk/mkfs ... <{cat $proto $bootproto}` after
# `mk binds`, which binds these directories of sys/lib/dist over the tree
# (`bind -a adm/timezone` is a union: the tree's own files first), and the
# whole tree at /dist/plan9front when it is a git checkout.
MKFILE_PROTOS = ("sys/lib/sysconfig/proto/distproto", "sys/lib/sysconfig/proto/9bootproto")
MKFILE_BINDS: dict[str, tuple[str, ...]] = {
    "/cfg": ("sys/lib/dist/cfg",),
    "/mail/lib": ("sys/lib/dist/mail/lib",),
    "/lib/ndb": ("sys/lib/dist/ndb",),
    "/adm/timezone": ("adm/timezone", "sys/lib/dist/adm/timezone"),
    "/usr": ("sys/lib/dist/usr",),
}
MKFILE_GIT_BIND = "/dist/plan9front"


class FsSpec(Record):
    """The fs partition: its file system, the protos and the source binds.

    A recipe's defaults (keys.FS): hjfs, MKFILE_PROTOS, MKFILE_BINDS, MKFILE_GIT_BIND,
    sdC0, not strict.
    """

    FIELDS = ("type", "protos", "binds", "git_bind", "disk", "strict")
    __slots__ = FIELDS

    type: str
    protos: tuple[str, ...]
    binds: dict[str, tuple[str, ...]]
    git_bind: str | None  # where the tree goes if it has a .git
    disk: str  # sd(3) name of the disk on the booted machine (cwfs's config)
    strict: bool  # a missing proto source is an error, not a warning

    def __init__(
        self,
        type: str,
        protos: tuple[str, ...],
        binds: dict[str, tuple[str, ...]],
        git_bind: str | None,
        disk: str,
        strict: bool,
    ) -> None:
        self.type = type
        self.protos = protos
        self.binds = binds
        self.git_bind = git_bind
        self.disk = disk
        self.strict = strict


class RawWrite(Record):
    """`dd -oseek` of a root file into the finished image (reform's flash.bin)."""

    FIELDS = ("file", "offset")
    __slots__ = FIELDS

    file: str
    offset: int

    def __init__(self, file: str, offset: int) -> None:
        self.file = file
        self.offset = offset


class IsoSpec(Record):
    """[iso]: mk9660's -v, -B and -E, the plan9.ini the CD gets, and the hybrid tail's
    inputs (used when `hybrid_loader`, 386/9boothyb, is in the tree)."""

    FIELDS = (
        "volume", "boot_image", "efi_boot_image", "plan9ini", "hybrid_loader", "hybrid_mbr",
        "hybrid_pbs", "hybrid_efi")
    __slots__ = FIELDS

    volume: str
    boot_image: str
    efi_boot_image: str | None
    plan9ini: str
    hybrid_loader: str | None
    hybrid_mbr: str | None
    hybrid_pbs: str | None
    hybrid_efi: tuple[str, ...]

    def __init__(
        self,
        volume: str,
        boot_image: str,
        efi_boot_image: str | None,
        plan9ini: str,
        hybrid_loader: str | None,
        hybrid_mbr: str | None,
        hybrid_pbs: str | None,
        hybrid_efi: tuple[str, ...],
    ) -> None:
        self.volume = volume
        self.boot_image = boot_image
        self.efi_boot_image = efi_boot_image
        self.plan9ini = plan9ini
        self.hybrid_loader = hybrid_loader
        self.hybrid_mbr = hybrid_mbr
        self.hybrid_pbs = hybrid_pbs
        self.hybrid_efi = hybrid_efi


class Recipe(Record):
    """A validated recipe; paths are relative to the root, sizes in MiB (mb), keys as keys.py."""

    FIELDS = (
        "name", "path", "sources", "description", "output", "format", "mb", "objtype", "kernels",
        "default", "mbr_bootcode", "fdisk", "prep", "fat_partition", "fat_pbs", "fat_reserved",
        "fat_files", "render", "vars", "fs", "raw_writes", "iso")
    __slots__ = FIELDS

    name: str
    path: Path
    sources: tuple[Path, ...]  # this file and every file it extends
    description: str
    output: str
    format: str
    mb: int
    objtype: str
    kernels: tuple[str, ...]
    default: bool
    mbr_bootcode: str | None
    fdisk: str | tuple[str, ...]  # "auto" (-baw) or script lines (-b)
    prep: tuple[str, ...]
    fat_partition: str
    fat_pbs: str | None
    fat_reserved: int
    fat_files: tuple[str, ...]
    render: dict[str, str]  # boot file name -> template name
    vars: dict[str, Any]
    fs: FsSpec
    raw_writes: tuple[RawWrite, ...]
    iso: IsoSpec | None

    def __init__(
        self,
        name: str,
        path: Path,
        sources: tuple[Path, ...],
        description: str,
        output: str,
        format: str,
        mb: int,
        objtype: str,
        kernels: tuple[str, ...],
        default: bool,
        mbr_bootcode: str | None,
        fdisk: str | tuple[str, ...],
        prep: tuple[str, ...],
        fat_partition: str,
        fat_pbs: str | None,
        fat_reserved: int,
        fat_files: tuple[str, ...],
        render: dict[str, str],
        vars: dict[str, Any],
        fs: FsSpec,
        raw_writes: tuple[RawWrite, ...] = (),
        iso: IsoSpec | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.sources = sources
        self.description = description
        self.output = output
        self.format = format
        self.mb = mb
        self.objtype = objtype
        self.kernels = kernels
        self.default = default
        self.mbr_bootcode = mbr_bootcode
        self.fdisk = fdisk
        self.prep = prep
        self.fat_partition = fat_partition
        self.fat_pbs = fat_pbs
        self.fat_reserved = fat_reserved
        self.fat_files = fat_files
        self.render = render
        self.vars = vars
        self.fs = fs
        self.raw_writes = raw_writes
        self.iso = iso

    def image_size(self, container: str) -> int:
        """The image size the mkfile makes for this container.

        qcow2: `disk/qcowfs -n mb*1048576` gives exactly mb MiB.  raw: `dd
        -bs 1048576 -oseek $mb -count 1` writes one MiB *after* mb MiB, so the
        file is mb+1 MiB.
        """
        return self.mb * MiB if container == "qcow2" else (self.mb + 1) * MiB

    def output_name(self, container: str) -> str:
        """`9front.amd64.qcow2`; written as the other container the suffix follows it."""
        if container == self.format:
            return self.output
        stem = self.output.rsplit(".", 1)[0]
        return f"{stem}.{'qcow2' if container == 'qcow2' else 'img'}"

    def root_inputs(self) -> list[str]:
        """Every root-relative input path, in a stable order."""
        paths: list[str] = []
        for p in (
            [self.mbr_bootcode, self.fat_pbs]
            + [f for f in self.fat_files if f not in self.render]
            + list(self.kernels)
            + [w.file for w in self.raw_writes]
            + (list(self.fs.protos) if self.fs.type != "none" else [])
            + ([self.iso.boot_image, self.iso.efi_boot_image] if self.iso else [])
        ):
            if p is not None and p not in paths:
                paths.append(p)
        return paths


def recipe_path(name: str, recipe_dir: Path = RECIPE_DIR) -> Path:
    """The .toml file of target `name` in `recipe_dir`."""
    return recipe_dir / f"{name}{RECIPE_SUFFIX}"


def list_recipes(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    """The target names of the recipes in `recipe_dir`, sorted."""
    return sorted(p.name[: -len(RECIPE_SUFFIX)] for p in recipe_dir.glob(f"*{RECIPE_SUFFIX}"))


def load_recipe(name_or_path: str | Path, recipe_dir: Path = RECIPE_DIR) -> Recipe:
    """Load a recipe by target name (`amd64.qcow2`) or by path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix != RECIPE_SUFFIX:
        path = recipe_path(str(name_or_path), recipe_dir)
        if not path.exists():
            known = ", ".join(list_recipes(recipe_dir))
            raise RecipeError(f"unknown target {name_or_path!r} (known: {known})")
    data, sources = _load_merged(path, recipe_dir, depth=0)
    return with_fs(_validate(path, data, tuple(sources)))


# rc/bin/inst/prepdisk autotype: the partitions of the plan9 partition each file server uses
FS_PREP = {"hjfs": ("fs",), "gefs": ("fs",), "cwfs": ("fscache", "fsworm", "other")}
SD_NAME = re.compile(r"sd[0-9A-Za-z][0-9A-Za-z.]*")


def with_fs(recipe: Recipe, kind: str | None = None, disk: str | None = None) -> Recipe:
    """The recipe with another file server (`--fs`) or disk name (`--set fs.disk=`).

    The plan9 partition is subdivided as prepdisk's autotype does for that
    file server: `fs` for hjfs and gefs, `fscache fsworm other` for cwfs (in place of
    whichever set the recipe's layout.prep lists).  Raises RecipeError for an
    unknown type or a disk name cwfs's config could not hold.
    """
    fs = recipe.fs
    if kind is not None:
        if kind not in FS_TYPES:
            raise RecipeError(f"--fs {kind!r}: expected one of {', '.join(FS_TYPES)}")
        fs = fs.replace(type=kind)
    if disk is not None:
        if not SD_NAME.fullmatch(disk):
            raise RecipeError(f"fs.disk {disk!r}: expected an sd(3) name such as sdC0 or sdF0")
        fs = fs.replace(disk=disk)
    wanted = FS_PREP.get(fs.type)
    prep = recipe.prep
    if wanted is not None:
        fs_parts = {p for parts in FS_PREP.values() for p in parts}
        kept = [p for p in prep if p not in fs_parts]
        first = next((i for i, p in enumerate(prep) if p in fs_parts), len(prep))
        at = len([p for p in prep[:first] if p not in fs_parts])
        prep = (*kept[:at], *wanted, *kept[at:])
    return recipe.replace(fs=fs, prep=tuple(prep))


def _read_toml(path: Path) -> dict[str, Any]:
    name = show_path(path)
    try:
        data = read_input(path, MAX_RECIPE_BYTES, "recipe")
    except FileNotFoundError:
        raise RecipeError(f"{name}: no such recipe file") from None
    except ImageBuildError as err:
        raise RecipeError(str(err)) from None
    except OSError as err:
        raise RecipeError(f"{name}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RecipeError(f"{name}:{line}: not UTF-8 text (byte {err.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{name}: {err}") from None
    except RecursionError:
        raise RecipeError(f"{name}: tables or arrays nested too deeply") from None


def _load_merged(path: Path, recipe_dir: Path, depth: int,
                 seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    data = _read_toml(path)
    parent_name = data.get("extends")
    if parent_name is None:
        return data, [path]
    if not isinstance(parent_name, str):
        raise RecipeError(f"{path}: key 'extends' must be a string, not {parent_name!r}")
    if depth >= MAX_EXTENDS_DEPTH:
        raise RecipeError(f"{path}: 'extends' chain deeper than {MAX_EXTENDS_DEPTH} (a cycle?)")
    parent_path = _parent_path(path, parent_name, recipe_dir)
    chain = (*seen, path.resolve())
    if parent_path.resolve() in chain:
        names = " -> ".join(p.name for p in (*chain, parent_path.resolve()))
        raise RecipeError(f"{path}: key 'extends': a cycle ({names})")
    base, sources = _load_merged(parent_path, recipe_dir, depth + 1, chain)
    merged = _deep_merge(base, data)  # (its `extends` is not read again)
    if "default" not in data:  # a derived target is built by default only if it says so
        merged.pop("default", None)
    if "output" not in data:  # nor does it write over its parent's image
        merged.pop("output", None)
    return merged, [path, *sources]


def _parent_path(path: Path, parent_name: str, recipe_dir: Path) -> Path:
    """The file `extends = parent_name` in recipe `path` names: a file beside `path` when
    the name ends in .toml, else a target of `recipe_dir`, else NAME.toml beside `path`.
    Raises RecipeError when there is none."""
    if parent_name.endswith(RECIPE_SUFFIX):
        candidates = [path.parent / parent_name]
    else:
        candidates = [recipe_path(parent_name, recipe_dir),
                      path.parent / f"{parent_name}{RECIPE_SUFFIX}"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RecipeError(f"{path}: key 'extends': no recipe named {parent_name!r}")


def _default_output(name: str, container: str) -> str:
    """9front.NAME, with the container's suffix when NAME has none (mine -> 9front.mine.img)."""
    if name.endswith((".qcow2", ".img")):
        return f"9front.{name}"
    return f"9front.{name}.{'qcow2' if container == 'qcow2' else 'img'}"


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_table(path: Path, table: Mapping[str, Any], schema: Mapping[str, Key],
                 prefix: str) -> None:
    """Unknown, missing, mistyped and out-of-range keys of one table (keys.py) are errors."""
    for key in table:
        if key not in schema:
            raise RecipeError(
                f"{path}: unknown key '{prefix}{key}' (expected one of: {', '.join(schema)})"
            )
    for key, spec in schema.items():
        if key not in table:
            if spec.required:
                raise RecipeError(f"{path}: missing key '{prefix}{key}'")
            continue
        value = table[key]
        kind = spec.type
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            kinds = (kind,) if isinstance(kind, type) else kind
            names = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise RecipeError(f"{path}: key '{prefix}{key}' must be {names}, not {value!r}")
        if spec.choices and value not in spec.choices:
            raise RecipeError(
                f"{path}: key '{prefix}{key}' must be one of {spec.choices}, not {value!r}"
            )
        if isinstance(value, int) and (
            (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi)
        ):
            bounds = (f"between {spec.lo} and {spec.hi}" if spec.hi is not None
                      else f"at least {spec.lo}")
            raise RecipeError(f"{path}: key '{prefix}{key}' must be {bounds}, not {value}")


def _get(table: Mapping[str, Any], schema: Mapping[str, Key], key: str) -> Any:
    """The value of `key`, or its declared default."""
    return table.get(key, schema[key].default)


def _strings(path: Path, key: str, value: list[Any]) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str) or not item:
            raise RecipeError(f"{path}: key '{key}' must be a list of non-empty strings")
    return tuple(value)


def _root_relative(path: Path, key: str, value: str) -> str:
    if "\0" in value:  # no file name holds one (open() would refuse it)
        raise RecipeError(f"{path}: key '{key}': {value!r} holds a NUL byte")
    if value.startswith("/") or ".." in Path(value).parts:
        raise RecipeError(f"{path}: key '{key}': {value!r} must be relative to the root, inside it")
    return value


def _output_name(path: Path, data: Mapping[str, Any]) -> None:
    """`output` is a file name in out/: a path there could write over any file."""
    output = data.get("output")
    if isinstance(output, str) and ("/" in output or "\0" in output or output in ("", ".", "..")):
        raise RecipeError(f"{path}: key 'output': {output!r} must be a file name (it goes in out/)")


def _validate(path: Path, data: dict[str, Any], sources: tuple[Path, ...]) -> Recipe:
    name = path.name[: -len(RECIPE_SUFFIX)]
    _output_name(path, data)
    if "iso" in data:
        return _validate_iso(path, name, data, sources)
    _check_table(path, data, keys.TOP, "")
    layout, fat = data["layout"], data["fat"]
    _check_table(path, layout, keys.LAYOUT, "layout.")
    _check_table(path, fat, keys.FAT, "fat.")
    fdisk = layout["fdisk"]
    if isinstance(fdisk, str) and fdisk != "auto":
        raise RecipeError(f"{path}: key 'layout.fdisk' must be \"auto\" or a list of commands")
    fdisk_value: str | tuple[str, ...] = (
        fdisk if isinstance(fdisk, str) else _strings(path, "layout.fdisk", fdisk)
    )
    render = _get(data, keys.TOP, "render")
    for fname, template in render.items():
        if not isinstance(template, str):
            raise RecipeError(f"{path}: key 'render.{fname}' must be a template name")
    variables = _get(data, keys.TOP, "vars")
    raw_writes = []
    for i, item in enumerate(_get(data, keys.TOP, "raw_write")):
        if not isinstance(item, dict):
            raise RecipeError(f"{path}: key 'raw_write[{i}]' must be a table")
        _check_table(path, item, keys.RAW_WRITE, f"raw_write[{i}].")
        file = _root_relative(path, f"raw_write[{i}].file", item["file"])
        raw_writes.append(RawWrite(file, item["offset"]))
    files = _strings(path, "fat.files", fat["files"])
    for f in files:
        if f not in render:
            _root_relative(path, "fat.files", f)
    reserved = _get(fat, keys.FAT, "reserved")
    kernels = tuple(
        _root_relative(path, "kernels", k) for k in _strings(path, "kernels", data["kernels"])
    )
    return Recipe(
        fs=_fs_spec(path, _get(data, keys.TOP, "fs")),
        name=name,
        path=path,
        sources=sources,
        description=data["description"],
        output=data.get("output", _default_output(name, data["format"])),
        format=data["format"],
        mb=data["mb"],
        objtype=data["objtype"],
        kernels=kernels,
        default=_get(data, keys.TOP, "default"),
        mbr_bootcode=_root_relative(path, "layout.mbr", layout["mbr"]) if "mbr" in layout else None,
        fdisk=fdisk_value,
        prep=_strings(path, "layout.prep", layout["prep"]),
        fat_partition=fat["partition"],
        fat_pbs=_root_relative(path, "fat.pbs", fat["pbs"]) if "pbs" in fat else None,
        fat_reserved=reserved,
        fat_files=files,
        render=dict(render),
        vars=dict(variables),
        raw_writes=tuple(raw_writes),
    )


def _validate_iso(path: Path, name: str, data: dict[str, Any], sources: tuple[Path, ...]) -> Recipe:
    """An [iso] recipe: the mkfile's %.pc.iso (mk9660, then the hybrid tail)."""
    top = {k: (spec.replace(default=None) if k in keys.DISK_ONLY else spec)
           for k, spec in keys.TOP.items()}
    _check_table(path, data, top, "")
    for key in keys.DISK_ONLY:
        if key in data:
            raise RecipeError(f"{path}: key {key!r} has no meaning in an [iso] recipe")
    if data["format"] != "iso":
        raise RecipeError(f"{path}: an [iso] recipe has format = \"iso\", not {data['format']!r}")
    table = data["iso"]
    _check_table(path, table, keys.ISO, "iso.")

    def rel(key: str) -> str | None:
        return _root_relative(path, f"iso.{key}", table[key]) if key in table else None

    if "\0" in table["volume"]:  # mk9660 takes it from argv, which holds none
        raise RecipeError(f"{path}: key 'iso.volume': {table['volume']!r} holds a NUL byte")
    iso = IsoSpec(
        volume=table["volume"],
        boot_image=_root_relative(path, "iso.boot_image", table["boot_image"]),
        efi_boot_image=rel("efi_boot_image"),
        plan9ini=rel("plan9ini") or "cfg/plan9.ini",
        hybrid_loader=rel("hybrid_loader"),
        hybrid_mbr=rel("hybrid_mbr"),
        hybrid_pbs=rel("hybrid_pbs"),
        hybrid_efi=tuple(_root_relative(path, "iso.hybrid_efi", g)
                         for g in _strings(path, "iso.hybrid_efi", table.get("hybrid_efi", []))),
    )
    kernels = tuple(
        _root_relative(path, "kernels", k) for k in _strings(path, "kernels", data["kernels"])
    )
    if not kernels:
        raise RecipeError(f"{path}: key 'kernels' must name the kernel bootfile= loads")
    return Recipe(
        fs=_fs_spec(path, data.get("fs", {})),
        name=name,
        path=path,
        sources=sources,
        description=data["description"],
        output=data.get("output", f"9front.{name}"),
        format="iso",
        mb=0,
        objtype=data["objtype"],
        kernels=kernels,
        default=data.get("default", False),
        mbr_bootcode=None,
        fdisk=(),
        prep=(),
        fat_partition="",
        fat_pbs=None,
        fat_reserved=1,
        fat_files=(),
        render={},
        vars=dict(data.get("vars", {"plan9": {}})),
        iso=iso,
    )


def _fs_spec(path: Path, table: dict[str, Any]) -> FsSpec:
    """[fs]: type ("hjfs" or "none"), protos, binds (fs path -> root dir or list), git_bind."""
    _check_table(path, table, keys.FS, "fs.")
    kind = _get(table, keys.FS, "type")
    protos = tuple(
        _root_relative(path, "fs.protos", p)
        for p in _strings(path, "fs.protos", table.get("protos", list(MKFILE_PROTOS)))
    )
    binds: dict[str, tuple[str, ...]] = dict(MKFILE_BINDS)
    for target, source in _get(table, keys.FS, "binds").items():
        key = f"fs.binds.{target}"
        if not target.startswith("/"):
            raise RecipeError(f"{path}: key '{key}': the bound path must start with /")
        sources = [source] if isinstance(source, str) else source
        if not isinstance(sources, list) or not sources:
            raise RecipeError(f"{path}: key '{key}' must be a directory or a list of them")
        binds[target] = tuple(_root_relative(path, key, s) for s in _strings(path, key, sources))
    git_bind = table.get("git_bind", MKFILE_GIT_BIND)
    if git_bind and (not git_bind.startswith("/") or "\0" in git_bind):
        raise RecipeError(f"{path}: key 'fs.git_bind': {git_bind!r} must be an fs path "
                          "starting with / (or \"\" for nowhere), without a NUL byte")
    disk = _get(table, keys.FS, "disk")
    if not SD_NAME.fullmatch(disk):
        raise RecipeError(f"{path}: key 'fs.disk' must be an sd(3) name such as sdC0, not {disk!r}")
    return FsSpec(kind, protos, binds, git_bind or None, disk, _get(table, keys.FS, "strict"))
