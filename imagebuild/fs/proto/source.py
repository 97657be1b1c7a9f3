"""Where proto lines find their sources: Plan 9 path cleaning and the source tree with binds."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path

from imagebuild.fs.proto.entry import ProtoError


def cleanname(path: str) -> str:
    """Plan 9 cleanname(2): drop empty and `.` elements, fold `..`, keep a leading `/`."""
    rooted = path.startswith("/")
    out: list[str] = []
    for elem in path.split("/"):
        if elem in ("", "."):
            continue
        if elem == "..":
            if out and out[-1] != "..":
                out.pop()
                continue
            if rooted:
                continue
        out.append(elem)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def mkpath(prefix: str, elem: str) -> str:
    """proto.c mkpath(): `prefix/elem`, cleaned."""
    return cleanname(f"{prefix}/{elem}")


class SourceTree:
    """The source root (mkfs -s) as seen through binds.

    `binds` maps a path of the source tree (as the new file system names it,
    e.g. "/cfg") to a directory that replaces it (`bind new old`) or to a
    list of directories searched in order (a union: `bind -a new old` is
    `[root/old, new]`).  The longest matching bind wins; inside it, a name is
    found in the first member that has it, and a directory listing is every
    member's names, first occurrence first (Plan 9's union read lists
    duplicates, but mkfs then finds the first member's file up to date).
    """

    def __init__(
        self, root: Path, binds: Mapping[str, Path | Sequence[Path]] | None = None
    ) -> None:
        self.root = Path(root)
        self.binds: dict[str, list[Path]] = {}
        for where, what in (binds or {}).items():
            key = cleanname("/" + where)
            members = (
                [Path(what)] if isinstance(what, str | os.PathLike) else [Path(p) for p in what]
            )
            if not members:
                raise ProtoError(f"bind {where}: no directories to bind")
            self.binds[key] = members

    def candidates(self, path: str) -> list[Path]:
        """Real paths that may hold `path` (a rooted path of the source tree), in lookup order."""
        path = cleanname("/" + path)
        best = ""
        for key in self.binds:
            if (path == key or path.startswith(key.rstrip("/") + "/")) and len(key) > len(best):
                best = key
        if not best:
            return [self.root / path.lstrip("/")]
        rest = path[len(best) :].lstrip("/")
        return [member / rest if rest else member for member in self.binds[best]]

    def plain(self, path: str) -> bool:
        """Whether directory `path` is one real directory with no bind at or below its entries:
        then an entry `name` in it comes from that directory's `name`, nothing else."""
        path = cleanname("/" + path)
        below = path.rstrip("/") + "/"
        return len(self.candidates(path)) == 1 and not any(k.startswith(below) for k in self.binds)

    def lookup(self, path: str) -> Path | None:
        for candidate in self.candidates(path):
            if os.path.lexists(candidate):
                return candidate
        return None

    def listdir(self, path: str) -> list[str]:
        """Names in directory `path`, sorted per member (the order a real dirread gives is the
        source file server's; sorting is the reproducible choice), union members in order."""
        path = cleanname("/" + path)
        names: list[str] = []
        seen: set[str] = set()
        for candidate in self.candidates(path):
            if not candidate.is_dir():
                continue
            for name in sorted(os.listdir(candidate)):
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        # bind points directly below `path` show up even where the tree has no such name
        # (the mkfile makes /n/src9/usr with aux/stub before binding over it).
        for key in sorted(self.binds):
            name = posixpath.basename(key)
            if key != "/" and posixpath.dirname(key) == path and name not in seen:
                seen.add(name)
                names.append(name)
        return names


__all__ = ["SourceTree", "cleanname", "mkpath"]
