"""The hjfs console commands the dist mkfile types between ream and mkfs (cons.c, auth.c).

    echo on; create /dist sys sys 775 d; create /usr sys sys 775 d
    newuser glenda; newuser adm +glenda; newuser sys +glenda; newuser upas +glenda

Only commands that change the disk do anything here; `create` and
`newuser` act with CHFNOPERM, as the console does.
"""

from __future__ import annotations

from imagebuild.errors import LayoutError
from imagebuild.fs.api import DMAPPEND, DMDIR, DMEXCL
from imagebuild.fs.hjfs.layout import name_problem
from imagebuild.fs.hjfs.server import HjfsServer, Node
from imagebuild.fs.hjfs.users import newuser, readusers
from imagebuild.plan9.libc import tokenize

# The console lines the dist mkfile feeds hjfs between ream and mkfs (its echo on/off omitted).
MKFILE_CONSOLE: tuple[str, ...] = (
    "create /dist sys sys 775 d",
    "create /usr sys sys 775 d",
    "newuser glenda",
    "newuser adm +glenda",
    "newuser sys +glenda",
    "newuser upas +glenda",
)
_QUIET = ("echo", "sync", "allow", "disallow", "noauth", "chatty", "users", "df")


def console(server: HjfsServer, line: str) -> None:
    """Run one hjfs console line; LayoutError quoting it for a command hjfs would refuse."""
    args = tokenize(line)
    if not args:
        raise LayoutError(f"hjfs console: empty command {line!r}")
    cmd = args[0]
    if cmd == "create":
        _cmdcreate(server, line, args)
    elif cmd == "newuser":
        newuser(server, line, args)
    elif cmd in _QUIET:
        if cmd == "users":
            readusers(server)
    else:
        raise LayoutError(f"hjfs console: unsupported command {line!r}")


def _uid(server: HjfsServer, name: str, line: str) -> int:
    uid = server.users.name2uid(name)
    if uid is None:
        known = ", ".join(u.name for u in server.users.users)
        raise LayoutError(f"hjfs console: {line!r}: unknown hjfs user {name!r} (known: {known})")
    return uid


def _walkpath(server: HjfsServer, line: str, path: str) -> tuple[Node, str]:
    """cons.c walkpath(): the parent directory and last element of an absolute path."""
    if not path.startswith("/"):
        raise LayoutError(f"hjfs console: {line!r}: {path}: file does not exist")
    elems = [e for e in path.split("/") if e]
    if not elems or path.endswith("/"):
        raise LayoutError(f"hjfs console: {line!r}: {path}: trailing slash")
    parent_path = "/" + "/".join(elems[:-1])
    parent = server.paths.get(parent_path)
    if parent is None or not parent.dentry.is_dir:
        raise LayoutError(f"hjfs console: {line!r}: {parent_path}: file does not exist")
    return parent, elems[-1]


def _cmdcreate(server: HjfsServer, line: str, args: list[str]) -> None:
    """cons.c cmdcreate(): create PATH UID GID PERM [dla]; owner set, then group by wstat."""
    if len(args) not in (5, 6):
        raise LayoutError(f"hjfs console: {line!r}: syntax error")
    try:
        perm = int(args[4], 8) & 0o777
    except ValueError:
        raise LayoutError(f"hjfs console: {line!r}: syntax error") from None
    for flag in args[5] if len(args) == 6 else "":
        bits = {"l": DMEXCL, "d": DMDIR, "a": DMAPPEND}.get(flag)
        if bits is None:
            raise LayoutError(f"hjfs console: {line!r}: syntax error")
        perm |= bits
    uid = _uid(server, args[2], line)
    gid = _uid(server, args[3], line)
    parent, name = _walkpath(server, line, args[1])
    if parent.path.rstrip("/") + "/" + name in server.paths:
        raise LayoutError(f"hjfs console: {line!r}: file exists")
    problem = name_problem(name.encode())
    if problem:
        raise LayoutError(f"hjfs console: {line!r}: {problem}")
    node = server.newentry(parent, name.encode(), perm, uid, noperm=True)
    server.setstat(node, gid=gid)


__all__ = ["MKFILE_CONSOLE", "console"]
