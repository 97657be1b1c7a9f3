"""cwfs's user table: numeric ids in Dentry, names in /adm/users.

References (9front, sys/src/cmd/cwfs/uidgid.c): minusers[] (`users default`),
cmd_users() (parsing /adm/users), do_newuser() (`newuser NAME` and
`newuser GROUP +MEMBER`), pentry() (the line format), strtouid() (-2 for an
unknown name), uidtostr() ("none" for an unknown id).
"""

from __future__ import annotations

from dataclasses import dataclass, field

NOUSER = -2  # strtouid(): the id of a name cwfs does not know


@dataclass
class User:
    """One user or group, as a line of /adm/users, `uid:name:leader:members`
    (cwfs uidgid.c pentry()).

    `uid` and `lead` are numeric ids (lead 0: no leader); `members` are uids.
    """

    uid: int
    name: str
    lead: int = 0  # 0 means no leader (pentry() prints nothing for it)
    members: list[int] = field(default_factory=list)


MINUSERS = (
    ("adm", -1, -1),
    ("none", 0, -1),
    ("tor", 1, 1),
    ("sys", 10000, 0),
    ("map", 10001, 10001),
    ("doc", 10002, 0),
    ("upas", 10003, 10003),
    ("font", 10004, 0),
    ("bootes", 10005, 10005),
)


class UserTable:
    """The in-memory `uid` array, kept sorted by uid as cwfs keeps it."""

    def __init__(self, users: list[User]) -> None:
        self.users = sorted(users, key=lambda u: u.uid)

    @classmethod
    def default(cls) -> UserTable:
        """uidgid.c setminusers(): the table after `users default`."""
        return cls([User(uid, name, lead) for name, uid, lead in MINUSERS])

    def by_name(self, name: str) -> User | None:
        for u in self.users:
            if u.name == name:
                return u
        return None

    def by_uid(self, uid: int) -> User | None:
        for u in self.users:
            if u.uid == uid:
                return u
        return None

    def strtouid(self, name: str) -> int:
        u = self.by_name(name)
        return u.uid if u is not None else NOUSER

    def uidtostr(self, uid: int) -> str:
        u = self.by_uid(uid)
        return u.name if u is not None else "none"

    def newuser(self, name: str) -> int:
        """`newuser NAME`: the first free id from 1, leader itself; returns the id."""
        uid = 1
        while self.by_uid(uid) is not None:
            uid += 1
        self.users.append(User(uid, name, uid if uid < 10000 else 0))
        self.users.sort(key=lambda u: u.uid)
        return uid

    def add_member(self, group: str, member: str) -> None:
        """`newuser GROUP +MEMBER`."""
        g, m = self.by_name(group), self.by_name(member)
        if g is None or m is None or g.uid == m.uid or m.uid in g.members:
            return
        g.members.append(m.uid)

    def lines(self) -> list[bytes]:
        """pentry() for each user, in uid order: `uid:name:leader:member,...`."""
        out = []
        for u in self.users:
            lead = self.by_uid(u.lead)
            text = f"{u.uid}:{u.name}:{lead.name if lead and u.lead != 0 else ''}:"
            names = []
            for m in u.members:
                mu = self.by_uid(m)
                names.append(mu.name if mu is not None else str(m))
            out.append((text + ",".join(names) + "\n").encode())
        return out

    @classmethod
    def parse(cls, data: bytes) -> UserTable:
        """cmd_users(): `number:name:leader:members` lines; malformed ones are skipped."""
        rows: list[tuple[int, str, str, str]] = []
        for line in data.decode("utf-8", "replace").split("\n"):
            fields = line.split(":")
            if len(fields) < 3:
                continue
            try:
                uid = int(fields[0].strip() or "0", 10)
            except ValueError:
                continue
            rows.append((uid, fields[1], fields[2], fields[3] if len(fields) > 3 else ""))
        table = cls([User(uid, name) for uid, name, _, _ in rows])
        for _uid, name, lead, members in rows:
            u = table.by_name(name)
            if u is None:
                continue
            if lead:
                lu = table.by_name(lead)
                u.lead = lu.uid if lu is not None else u.uid
            u.members = [table.strtouid(m) for m in members.split(",") if m and table.by_name(m)]
        return table
