"""hjfs's user table as the server keeps it: /adm/users written and read back (auth.c, fs1.c).

hjfs holds its users in memory and saves them to /adm/users as text
(`uid:name:leader:members`, one user per line) through a Biobuf; ream makes
the file from the built-in table (auth.c udef[]), and every `newuser`
console command rewrites it.
"""

from __future__ import annotations

from imagebuild.errors import LayoutError
from imagebuild.fs.api import DMDIR
from imagebuild.fs.hjfs.layout import RBLOCK, User, UserTable, name_problem, user_problem
from imagebuild.fs.hjfs.server import ADM_UID, HjfsServer

USERS_BIO = RBLOCK - 5  # userssave(): Binits on RBLOCK bytes keeps Bungetsize (UTFmax+1) back


def bio_pieces(data: bytes, size: int) -> list[bytes]:
    """The writes a Biobuf of `size` bytes makes of UTF-8 text printed into it.

    fmt (fmtdef.h FMTRUNE) and Bputc flush the buffer when the next rune
    does not fit, so a piece is `size` bytes unless a multi-byte rune would
    straddle its end; then it ends before that rune.
    """
    pieces: list[bytes] = []
    start = i = 0
    while i < len(data):
        lead = data[i]
        n = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if i + n - start > size:
            pieces.append(data[start:i])
            start = i
        i += n
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def writeusers(server: HjfsServer) -> None:
    """fs1.c writeusers(): make /adm, create or truncate /adm/users, write the table as adm."""
    root = server.paths["/"]
    if "/adm" not in server.paths:
        server.newentry(root, b"adm", DMDIR | 0o775, ADM_UID, noperm=False)
    adm = server.paths["/adm"]
    users = server.paths.get("/adm/users")
    if users is None:
        users = server.newentry(adm, b"users", 0o664, ADM_UID, noperm=False)
    else:  # chanopen(OWRITE|OTRUNC)
        server.truncate(users.dentry)
        server.modified(users.dentry, ADM_UID)
    for piece in bio_pieces(server.users.serialize(), USERS_BIO):
        # Bchanwrite appends at the current length
        server.write_bytes(users, users.dentry.size, piece, ADM_UID)


def readusers(server: HjfsServer) -> None:
    """fs1.c readusers(): the table hjfs works with is what /adm/users says."""
    server.users = UserTable.parse(server.read_literal(server.paths["/adm/users"]))


def newuser(server: HjfsServer, line: str, args: list[str]) -> None:
    """auth.c cmdnewuser(): add or change a user, rewrite /adm/users, maybe make /usr/NAME.

    `args` is the tokenized console `line` (`newuser NAME [:] [+-=]USER... [NEWNAME]`);
    raises LayoutError quoting `line` where hjfs would answer with an error.
    """
    if len(args) < 2:
        raise LayoutError(f"hjfs console: {line!r}: syntax error")
    name = args[1]
    if user_problem(name):
        raise LayoutError(f"hjfs console: {line!r}: invalid user name")
    table = server.users.users
    uid, gid = 0, 10000
    user: User | None = None
    for u in table:
        if u.name == name:
            user = u
            break
        if u.uid == uid:
            uid += 1
        if u.uid == gid:
            gid += 1
    resort = createdir = False
    if user is None:
        resort = True
        user = User(gid, name)
        table.append(user)
        if len(args) == 2 or args[2] != ":":
            user.lead = user.uid = uid
            createdir = True
    for arg in args[2:]:
        if arg == ":":
            continue
        if arg[0] not in "+-=":
            if user_problem(arg):
                raise LayoutError(f"hjfs console: {line!r}: bad option {arg}")
            user.name = arg
            continue
        other = next((v for v in table if v.name == arg[1:]), None)
        if other is None:
            raise LayoutError(f"hjfs console: {line!r}: no user {arg[1:]!r}")
        if arg[0] == "=":
            user.lead = other.uid
            continue
        j = 0
        while j < len(user.members) and user.members[j] < other.uid:
            j += 1
        if arg[0] == "-":
            if j >= len(user.members) or user.members[j] != other.uid:
                raise LayoutError(f"hjfs console: {line!r}: {arg[1:]} is not a member")
            del user.members[j]
        else:
            user.members.insert(j, other.uid)
    if resort:
        table.sort(key=lambda u: u.uid)
    writeusers(server)
    if createdir:
        _createuserdir(server, name, uid)


def _createuserdir(server: HjfsServer, name: str, uid: int) -> None:
    """auth.c createuserdir(): /usr/NAME owned by the new user; the group set by wstat."""
    usr = server.paths.get("/usr")
    if usr is None or not usr.dentry.is_dir:
        return
    target = usr
    path = "/usr/" + name
    if path not in server.paths and not name_problem(name.encode()):
        target = server.newentry(usr, name.encode(), DMDIR | 0o775, uid, noperm=True)
    # when the create fails hjfs applies the wstat to /usr itself
    server.setstat(target, gid=server.users.name2uid(name))


__all__ = ["USERS_BIO", "bio_pieces", "newuser", "readusers", "writeusers"]
