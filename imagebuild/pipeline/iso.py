"""Build an ISO target: the dist mkfile's `%.pc.iso` rule.

    mk binds
    {grep -v '^bootfile=' /n/src9/cfg/plan9.ini; echo bootfile=$kernel} > /env/plan9.ini
    bind /env/plan9.ini /n/src9/cfg/plan9.ini
    disk/mk9660 -c9j -B 386/9bootiso -E 386/efiboot.fat -p <{cat $proto $bootproto} \\
        -s /n/src9 -v 'Plan 9 Front ('$objtype')' $target

plan_iso() reads the protos and every input and renders plan9.ini; it
refuses a bootfile= that is not a file of the image, or one 9bootiso cannot
reach (it walks ISO 9660 names, so each element must be an 8.3 name).
build_iso() writes the image to a temporary file renamed on success.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild.errors import InputError, LayoutError
from imagebuild.fs.proto import ProtoEntry
from imagebuild.recipe.load import Recipe


@dataclass
class IsoPlan:
    """Everything an ISO build needs, settled before the first byte is written: recipe, tree
    `root`, `output` path, times in seconds since the epoch, proto entries, plan9.ini bytes,
    boot file, optional hybrid loader, container ("iso" or "qcow2") and sources left out.
    """

    recipe: Recipe
    root: Path
    output: Path
    demo: bool
    now: int
    pinned_time: int | None
    entries: list[ProtoEntry]
    plan9ini: bytes
    bootfile: str
    hybrid_loader: Path | None
    container: str = "iso"
    missing_sources: list[Any] = dataclasses.field(default_factory=list)  # left out, as mkfs


def render_plan9ini(tree_text: bytes, bootfile: str, sets: list[tuple[str, str]], *,
                    demo: bool) -> bytes:
    """The tree's plan9.ini without bootfile= lines, then bootfile=; --set plan9.KEY=VALUE
    replaces the first KEY= line or adds one at the end (bootfile included)."""
    lines = [ln for ln in tree_text.decode("utf-8", "replace").splitlines()
             if not ln.startswith("bootfile=")]
    if demo:
        lines.insert(0, "# imagebuild demo root: the kernel and boot programs here are "
                        "generated stand-ins, not 9front")
    lines.append(f"bootfile={bootfile}")
    for key, value in sets:
        for i, line in enumerate(lines):
            if line.split("=", 1)[0] == key and "=" in line:
                lines[i] = f"{key}={value}"
                break
        else:
            lines.append(f"{key}={value}")
    return "".join(ln + "\n" for ln in lines).encode()


def _plan9_sets(recipe: Recipe, sets: list[str]) -> list[tuple[str, str]]:
    from imagebuild.recipe.render import apply_sets, parse_set

    variables: dict[str, Any] = copy.deepcopy(recipe.vars) or {"plan9": {}}
    apply_sets(recipe, variables, sets)  # the same errors as the disk targets' --set
    out = []
    for text in sets:
        path, value = parse_set(text)
        if len(path) != 2:
            raise InputError(f"--set {text}: plan9.ini keys are plan9.KEY=VALUE")
        out.append((path[1], value))
    return out


def reachable_by_9boot(path: str) -> str | None:
    """Why 9bootiso's isowalk() could not find `path` by its ISO 9660 names, or None."""
    from imagebuild.fs.iso9660.names import is_bad_iso9660

    for elem in path.strip("/").split("/"):
        if is_bad_iso9660(elem):
            return f"{elem!r} is not an 8.3 name (mk9660 -c renames it; 9boot walks ISO names)"
    return None


def plan_iso(recipe: Recipe, options: Any) -> IsoPlan:
    """Read the protos, the tree's plan9.ini and the boot images; check bootfile=."""
    from imagebuild.pipeline.demo import is_demo_root
    from imagebuild.pipeline.plan import fs_tree, source_date_epoch

    assert recipe.iso is not None
    root = Path(options.root)
    if options.files:
        raise InputError(f"{recipe.name}: --file adds boot-partition files; an ISO has none")
    if (getattr(options, "container", None) or not getattr(options, "fs", True)
            or getattr(options, "fs_type", None)):
        raise InputError(f"{recipe.name}: an ISO image has no --format, --fs or --no-fs choice")
    missing = [p for p in [*recipe.fs.protos] if not (root / p).is_file()]
    if missing:
        raise InputError(f"{recipe.name}: missing inputs under {root}: {', '.join(missing)}")
    left_out: list[Any] = []  # missing sources: mk9660's rdproto warns and goes on
    strict = getattr(options, "strict", False) or getattr(recipe.fs, "strict", False)
    entries = fs_tree(recipe, root, None if strict else left_out)
    by_path = {e.path: e for e in entries}
    iso = recipe.iso
    for label, path in (("iso.boot_image", iso.boot_image), ("iso.efi_boot_image",
                                                            iso.efi_boot_image)):
        if path is None:
            continue
        entry = by_path.get("/" + path)
        if entry is None or entry.is_dir:
            raise InputError(
                f"{recipe.name}: {label} {path}: not on the image (the protos must list it, "
                f"as 9bootproto does) or missing under {root}"
            )
    ini_entry = by_path.get("/" + iso.plan9ini)
    if ini_entry is None or ini_entry.is_dir:
        raise InputError(f"{recipe.name}: the protos put no /{iso.plan9ini} on the image")
    try:
        tree_ini = ini_entry.source.read_bytes()
    except OSError as e:
        raise InputError(f"{ini_entry.source}: cannot read: {e.strerror}") from None

    epoch = options.timestamp if getattr(options, "timestamp", None) is not None else (
        source_date_epoch())
    now = epoch if epoch is not None else int(time.time())
    bootfile = "/" + recipe.kernels[0]
    plan9_sets = _plan9_sets(recipe, list(options.sets))
    demo = is_demo_root(root)
    plan9ini = render_plan9ini(tree_ini, bootfile, plan9_sets, demo=demo)
    for key, value in plan9_sets:
        if key == "bootfile":
            bootfile = value
    kernel_path = bootfile.rsplit("!", 1)[-1]
    kernel = by_path.get("/" + kernel_path.lstrip("/"))
    if kernel is None or kernel.is_dir:
        raise LayoutError(
            f"{recipe.name}: bootfile={bootfile} is not a file on the image: the protos "
            f"({', '.join(recipe.fs.protos)}) must put it there (distproto's `$objtype *`)"
        )
    why = reachable_by_9boot(kernel_path)
    if why:
        raise LayoutError(f"{recipe.name}: bootfile={bootfile}: 9bootiso cannot reach it: {why}")
    loader = root / iso.hybrid_loader if iso.hybrid_loader else None
    output = options.output or Path("out") / recipe.output
    return IsoPlan(recipe, root, Path(output), demo, now, epoch, entries, plan9ini, bootfile,
                   loader if loader is not None and loader.is_file() else None,
                   missing_sources=left_out)


def write_iso_image(plan: IsoPlan, out: Any, scratch: Path) -> Any:
    """mk9660 into `out` with plan9.ini bound over the tree's; returns the IsoSummary."""
    from imagebuild.fs.iso9660.writer import Mk9660Options, write_iso

    assert plan.recipe.iso is not None
    ini_path = "/" + plan.recipe.iso.plan9ini
    bound = scratch / "plan9.ini"
    bound.write_bytes(plan.plan9ini)
    entries = [
        e.replace(source=bound, length=len(plan.plan9ini), mtime=plan.now)
        if e.path == ini_path else e
        for e in plan.entries
    ]
    options = Mk9660Options(
        volume_id=plan.recipe.iso.volume,
        now=plan.now,
        boot_image=plan.recipe.iso.boot_image,
        efi_boot_image=plan.recipe.iso.efi_boot_image,
        pinned_time=plan.pinned_time,
    )
    return write_iso(entries, out, options)


def build_iso(recipe: Recipe, options: Any, progress: Any = None) -> IsoPlan:
    """Plan, then write the ISO atomically to plan.output."""
    from imagebuild.pipeline.output import atomic_output, check_output

    plan = plan_iso(recipe, options)
    check_output(plan.output)
    if progress:
        progress("mk9660", 0, None)
    if plan.hybrid_loader is not None:
        from imagebuild.pipeline.iso_hybrid import hybrid_inputs

        hybrid_inputs(plan)  # every input read before the first byte is written
    with atomic_output(plan.output) as tmp, tempfile.TemporaryDirectory() as scratch:
        with open(tmp, "w+b") as out:
            write_iso_image(plan, out, Path(scratch))
        if plan.hybrid_loader is not None:
            from imagebuild.pipeline.iso_hybrid import add_hybrid_tail

            if progress:
                progress("hybrid tail", 0, None)
            add_hybrid_tail(plan, tmp)
    return plan
