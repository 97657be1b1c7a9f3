"""What the user sees: progress while writing and layout tables afterwards.

rich draws both on a terminal; when stdout is not a terminal (CI logs) or
--plain is given, the same facts come out as plain lines.  rich is imported
only when it draws.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imagebuild.util.progress import Progress
from imagebuild.util.sizes import format_size


def use_rich(plain: bool) -> bool:
    """True when output goes to a terminal and --plain was not given."""
    return not plain and sys.stdout.isatty()


@contextmanager
def build_progress(title: str, *, quiet: bool, plain: bool) -> Iterator[Progress | None]:
    """A Progress callback: a rich bar per step, or one plain line per finished step."""
    if quiet:
        yield None
        return
    if not use_rich(plain):
        state: dict[str, int] = {}

        def plain_progress(step: str, written: int, total: int | None) -> None:
            if step not in state:
                _flush_plain(state)
            state.clear()
            state[step] = written

        print(title, flush=True)
        yield plain_progress
        _flush_plain(state)
        return

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TimeElapsedColumn(),
        transient=False,
    ) as bars:
        bars.console.print(f"[bold]{title}")
        tasks: dict[str, Any] = {}

        def rich_progress(step: str, written: int, total: int | None) -> None:
            if step not in tasks:
                for other in tasks.values():  # a new step finishes the previous one
                    bars.update(other, total=bars.tasks[other].completed)
                tasks[step] = bars.add_task(step, total=total)
            bars.update(tasks[step], completed=written)

        yield rich_progress
        for task in tasks.values():
            bars.update(task, total=bars.tasks[task].completed)


def _flush_plain(state: dict[str, int]) -> None:
    for step, written in state.items():
        print(f"  {step:<16} {format_size(written):>10} written", flush=True)


def print_layout(info: dict[str, Any], *, plain: bool) -> None:
    """Tables of an inspect_image() result: image, MBR, Plan 9 table, FAT files."""
    sections = layout_sections(info)
    if not use_rich(plain):
        for title, columns, rows in sections:
            print(f"{title}:")
            widths = [max([len(str(c)), *(len(str(r[i])) for r in rows)])  # rows may be []
                      for i, c in enumerate(columns)]
            print("  " + "  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
            for row in rows:
                print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, columns, rows in sections:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, justify="right" if column in _NUMERIC else "left")
        for row in rows:
            table.add_row(*(str(v) for v in row))
        console.print(table)


_NUMERIC = {"start", "end", "sectors", "size", "bytes", "clusters", "lba"}


def layout_sections(info: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, column names, rows) per table of an inspect_image() result."""
    sections: list[tuple[str, list[str], list[list[Any]]]] = []
    image_rows = [
        ["file", info["path"]],
        ["format", info["format"]],
        ["virtual size", f"{format_size(info['virtual_size'])} ({info['virtual_size']} bytes)"],
        ["file size", f"{format_size(info['file_size'])} ({info['file_size']} bytes)"],
        ["disk usage", f"{format_size(info['disk_usage'])} (allocated blocks)"],
    ]
    if "qcow2" in info:
        q = info["qcow2"]
        image_rows.append(["qcow2", f"v{q['version']}, {q['cluster_size']} B clusters"
                           + (f", backing {q['backing_file']}" if q.get("backing_file") else "")])
    sections.append(("Image", ["", "value"], image_rows))
    if info.get("mbr"):
        rows = [[p["number"], f"0x{p['type']:02x}", p["type_name"], "*" if p["active"] else "",
                 p["start"], p["sectors"], format_size(p["sectors"] * 512)] for p in info["mbr"]]
        sections.append(("MBR partitions", ["#", "type", "name", "active", "start", "sectors",
                                            "size"], rows))
    if info.get("plan9"):
        rows = [[p["name"], p["start"], p["end"], format_size((p["end"] - p["start"]) * 512)]
                for p in info["plan9"]]
        sections.append(("Plan 9 partitions", ["name", "start", "end", "size"], rows))
    if info.get("fs"):
        fs = info["fs"]
        block = fs["block_size"]
        rows = [["blocks", f"{fs['blocks_used']} used of {fs['blocks_total']} "
                 f"({format_size(fs['blocks_used'] * block)} of "
                 f"{format_size(fs['blocks_total'] * block)})"],
                ["directories", fs["directories"]], ["files", fs["files"]],
                ["bytes", f"{format_size(fs['bytes'])} ({fs['bytes']})"]]
        sections.append((f"fs: {fs['type']}", ["", "value"], rows))
    if info.get("iso"):
        sections.extend(_iso_sections(info["iso"]))
    for fat in info.get("fat", []):
        rows = [[f["name"], f["size"], f["mtime"]] for f in fat["files"]]
        sections.append((f"{fat['partition']}: FAT{fat['fat_bits']}, "
                         f"{fat['cluster_size']} B clusters", ["file", "bytes", "modified"], rows))
    return sections


def _iso_sections(iso: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """inspect of an ISO 9660 image: its descriptors and its El Torito catalog."""
    rows = [[d["block"], d["name"]] for d in iso["descriptors"]]
    rows += [["", f"system {iso['system_id']!r}, volume {iso['volume_id']!r}, "
                  f"{iso['volume_blocks']} blocks"]]
    out: list[tuple[str, list[str], list[list[Any]]]] = [
        ("ISO 9660 volume descriptors", ["block", "descriptor"], rows)]
    catalog = iso.get("boot_catalog")
    if catalog:
        rows = [[e["entry"], e["platform"], "yes" if e["bootable"] else "no",
                 "none" if e["media"] == 0 else e["media"], e["sectors"], e["lba"],
                 e["file"] or "?"] for e in catalog["entries"]]
        out.append((f"El Torito boot catalog (block {catalog['block']})",
                    ["entry", "platform", "bootable", "emulation", "sectors", "lba", "file"],
                    rows))
    return out

