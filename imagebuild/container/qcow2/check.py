"""Consistency check of a QCOW2 image, as `qemu-img check` does it.

The refcounts every host cluster should have are rebuilt from what refers to
it (header, L1/L2 tables, data and compressed clusters, the refcount
structures themselves, snapshots, bitmaps; `references.py`) and compared with the stored
refcounts: a stored refcount above the references is a leak (wasted space), one
below is a corruption (a later allocation could hand out a cluster in use).

References: QEMU, block/qcow2-refcount.c (qcow2_check_refcounts,
check_refcounts_l1/l2, compare_refcounts, check_oflag_copied) and
qemu-img.c (the report and the exit codes 0, 2, 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from imagebuild.container.qcow2.format import OFLAG_COPIED, size_to_clusters
from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.container.qcow2.references import (
    Tally,
    compute_references,
    rebuild_refcounts,
    stored_refcounts,
)
from imagebuild.errors import ImageBuildError, ImageFormatError

EXIT_CLEAN, EXIT_CORRUPT, EXIT_LEAKS = 0, 2, 3


@dataclass
class CheckResult(Tally):
    """What `qemu-img check` reports (its JSON field names in to_json())."""

    filename: str = ""
    check_errors: int = 0
    leaks: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0

    @property
    def clean(self) -> bool:
        """No corruptions, leaks or check errors."""
        return not (self.corruptions or self.leaks or self.check_errors)

    @property
    def exit_code(self) -> int:
        """qemu-img check's: 0 clean, 2 corruptions, 3 only leaks."""
        if self.corruptions or self.check_errors:
            return EXIT_CORRUPT
        if self.leaks:
            return EXIT_LEAKS
        return EXIT_CLEAN

    def to_json(self) -> dict[str, Any]:
        """`qemu-img check --output=json`: its keys, and its habit of leaving out zeros."""
        out: dict[str, Any] = {}
        if self.image_end_offset:
            out["image-end-offset"] = self.image_end_offset
        for key, value in (("compressed-clusters", self.compressed_clusters),
                           ("total-clusters", self.total_clusters)):
            if value:
                out[key] = value
        out["check-errors"] = self.check_errors
        for key, value in (("corruptions", self.corruptions), ("leaks", self.leaks),
                           ("corruptions-fixed", self.corruptions_fixed),
                           ("leaks-fixed", self.leaks_fixed),
                           ("allocated-clusters", self.allocated_clusters)):
            if value:
                out[key] = value
        out["filename"] = self.filename
        out["format"] = "qcow2"
        if self.fragmented_clusters:
            out["fragmented-clusters"] = self.fragmented_clusters
        return out

    def to_human(self) -> str:
        """`qemu-img check` human output, line for line."""
        lines = list(self.messages)
        if lines:
            lines.append("")
        if self.leaks_fixed or self.corruptions_fixed:
            lines.append(f"The following inconsistencies were found and repaired:\n\n"
                         f"    {self.leaks_fixed} leaked clusters\n"
                         f"    {self.corruptions_fixed} corruptions\n")
            lines.append("Double checking the fixed image now...")
        if self.clean:
            lines.append("No errors were found on the image.")
        else:
            if self.corruptions:
                lines.append(f"{self.corruptions} errors were found on the image.\n"
                             "Data may be corrupted, or further writes to the image may "
                             "corrupt it.")
            if self.leaks:
                if self.corruptions:
                    lines.append("")
                lines.append(f"{self.leaks} leaked clusters were found on the image.\n"
                             "This means waste of disk space, but no harm to data.")
            if self.check_errors:
                lines.append(f"{self.check_errors} internal errors have occurred during the "
                             "check.")
        if self.total_clusters and self.allocated_clusters:
            t = self.total_clusters
            lines.append(
                f"{self.allocated_clusters}/{t} = "
                f"{self.allocated_clusters * 100 / t:.2f}% allocated, "
                f"{self.fragmented_clusters * 100 / t:.2f}% fragmented, "
                f"{self.compressed_clusters * 100 / t:.2f}% compressed clusters"
            )
        if self.image_end_offset:
            lines.append(f"Image end offset: {self.image_end_offset}")
        return "\n".join(lines) + "\n"


def check(target: str | os.PathLike[str] | Qcow2Image, repair: str | None = None,
          ) -> CheckResult:
    """Check an image like `qemu-img check`; repair="leaks" or "all" fixes refcounts."""
    if isinstance(target, Qcow2Image):
        if target.writable:
            target.flush()
        result = _check_open_image(target)
        if repair and _fixable(result, repair):
            if not target.writable:
                raise ImageBuildError(f"{target.path}: open it for writing to repair it")
            _repair(target, result, repair)
        return result
    path = os.fspath(target)
    with Qcow2Image.open(path) as image:
        result = _check_open_image(image)
    if repair and _fixable(result, repair):
        with Qcow2Image.open(path, writable=True, rebuild=False) as image:
            _repair(image, result, repair)
    return result


def _fixable(result: CheckResult, repair: str) -> bool:
    if repair not in ("leaks", "all"):
        raise ImageBuildError(f"repair mode {repair!r} (expected leaks or all)")
    return bool(result.leaks or (repair == "all" and result.corruptions))


def _repair(image: Qcow2Image, before: CheckResult, repair: str) -> None:
    fixed_leaks, fixed_errors = rebuild_refcounts(image, fix_errors=repair == "all")
    image.flush()
    after = _check_open_image(image)
    after.messages = before.messages
    after.leaks_fixed = fixed_leaks
    after.corruptions_fixed = fixed_errors
    before.__dict__.update(after.__dict__)


def _check_open_image(image: Qcow2Image) -> CheckResult:
    result = CheckResult(filename=image.path)
    try:
        expected, copied = compute_references(image, result)
        stored = stored_refcounts(image, result)
    except ImageFormatError as err:
        result.check_errors += 1
        result.messages.append(f"ERROR {err}")
        return result
    highest = -1
    # Like QEMU, compare the clusters the file holds; stored refcounts past its end are moot.
    for i in range(size_to_clusters(image.file_size, image.cluster_bits)):
        want = expected[i] if i < len(expected) else 0
        have = stored[i] if i < len(stored) else 0
        if want or have:
            highest = i
        if want == have:
            continue
        if have < want:
            result.corruptions += 1
            result.messages.append(f"ERROR cluster {i} refcount={have} reference={want}")
        else:
            result.leaks += 1
            result.messages.append(f"Leaked cluster {i} refcount={have} reference={want}")
    result.image_end_offset = (highest + 1) * image.cluster_size
    for what, where, entry, cluster in copied:
        refcount = stored[cluster] if cluster < len(stored) else 0
        if (refcount == 1) != bool(entry & OFLAG_COPIED):
            result.corruptions += 1
            result.messages.append(
                f"ERROR OFLAG_COPIED {what}: {'l1' if what == 'L2 cluster' else 'l2'}"
                f"_entry={entry:x} refcount={refcount} (entry {where})"
            )
    return result


