"""What 9bootfat can load: a PC boot FAT checked against 9front's loader before it is written.

9bootfat (sys/src/boot/pc: l.s, fat.c, sub.c) finds the FAT, reads
`plan9.ini` into its configuration area, takes `bootfile=` and walks the FAT
for that file.  It is stricter than FAT, and says only "not found" (or
overruns a buffer) at boot time, so an image that breaks one of its rules
builds fine and does not boot.  Each rule below is one BootLintError naming
the key or file and the loader's rule:

* `bootfile=` must name a file of the FAT (fat.c fatwalk; the value's part
  after the last `!` is the path, sub.c configure);
* in lower case: fat.c dirname() lower-cases each 8.3 name and fatwalk()
  compares it with the path byte for byte;
* stored as an 8.3 name: dirname() skips long-name slots (attr 0x0F), so a
  file with a long name is visible only as its alias (`NAME~N`);
* at most BOOTFILE_MAX bytes: sub.c getconf() copies the value unchecked into
  start()'s `char path[Maxpath]` (fat.c Maxpath = 64, with its NUL);
* plan9.ini must fit the configuration area: configure() stores each
  accepted `key=value` line at CONFADDR+64, BOOTARGSLEN = 4096-0x200-64
  bytes, reading every raw line just past what is stored, with no bound.
  The `*e820=` memory map the loader stores first depends on the machine
  and is not counted.

References: 9front sys/src/boot/pc/fat.c (Maxpath, dirname, fatwalk,
start), sys/src/boot/pc/sub.c (BOOTLINELEN, BOOTARGSLEN, readline, getconf,
delconf, configure), sys/src/boot/pc/mem.h (CONFADDR).
"""

from __future__ import annotations

from collections.abc import Sequence

from imagebuild.errors import ImageBuildError
from imagebuild.fs.fat.dirent import is_long_name, make_alias
from imagebuild.util.record import Record

LOADER = "9bootfat"  # the boot program this lint is for (/386/9bootfat)
CONFIG = "plan9.ini"
MAXPATH = 64  # fat.c: char path[Maxpath] receives bootfile's value and its NUL
BOOTFILE_MAX = MAXPATH - 1
BOOTLINELEN = 64  # sub.c
BOOTARGSLEN = 4096 - 0x200 - BOOTLINELEN  # sub.c: the configuration area, 3520 bytes
_WHITE = "\t "  # sub.c readline: blanks dropped at a line's start and end


class BootLintError(ImageBuildError):
    """The boot FAT breaks a rule of 9front's PC loader: the image would not boot."""


class LoaderConfig(Record):
    """plan9.ini as 9bootfat's configure() stores it.

    `lines` are the stored `key=value` lines in order; `high_water` the most
    bytes of the configuration area any step used (stored lines plus the raw
    line being read and its NUL), the number BOOTARGSLEN bounds; `dropped`
    the last line when it has no line end (readline() never returns it) and
    configure() would have used it.
    """

    FIELDS = ("lines", "high_water", "dropped")
    __slots__ = FIELDS

    lines: tuple[str, ...]
    high_water: int
    dropped: str | None

    def __init__(self, lines: tuple[str, ...], high_water: int, dropped: str | None = None
                 ) -> None:
        self.lines = lines
        self.high_water = high_water
        self.dropped = dropped

    def get(self, key: str) -> str | None:
        """sub.c getconf(): the value of the first stored line starting with `key=`."""
        prefix = key + "="
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None


def _delconf(stored: list[str], key: str) -> int:
    """sub.c delconf(): drop the first stored line that starts with `key`; the bytes freed."""
    for i, old in enumerate(stored):
        if old.startswith(key):
            del stored[i]
            return len(old) + 1
    return 0


def read_config(text: bytes) -> LoaderConfig:
    """sub.c configure() over plan9.ini's bytes, stopping at a `boot` line as the loader does.

    readline(): lines end at CR, LF or NUL, blanks at both ends are dropped,
    empty lines skipped, and a last line without an end is never returned.
    configure(): lines starting with `#`, `;` or `=` are skipped; `[common]`
    and other `[...]` blocks decide whether the lines that follow count;
    `clear` empties the area, `clear KEY` deletes; a `key=value` line first
    deletes the first stored line that starts with `key` (delconf's prefix
    match), then is stored, except `apm*` lines, which the loader replaces
    with what the BIOS says.
    """
    stored: list[str] = []
    used = high = 0
    inblock = False
    chunks = text.replace(b"\r", b"\n").replace(b"\0", b"\n").split(b"\n")
    last = chunks.pop().decode("latin-1").strip(_WHITE)  # no line end: readline() drops it
    for chunk in chunks:
        raw = chunk.decode("latin-1").lstrip(_WHITE)
        high = max(high, used + 1 + len(raw) + 1)  # read at confend+1, with its NUL
        line = raw.rstrip(_WHITE)
        if not line or line[0] in "#;=":
            continue
        if line[0] == "[":
            inblock = not line.startswith("[common]")
            continue
        if line == "boot":
            last = ""  # nothing after `boot` is read
            break
        if line == "clear":
            stored, used = [], 0
            continue
        if line.startswith("clear "):
            used -= _delconf(stored, line[6:])
            continue
        if inblock or "=" not in line:  # `wait`, `show` and other words among them
            continue
        key, value = line.split("=", 1)
        used -= _delconf(stored, key)
        if key.startswith("apm"):
            continue
        stored.append(f"{key}={value}")
        used += len(key) + len(value) + 2  # (never above the raw line just read)
    # the dropped line matters when configure() would have used it
    dropped = last if last and last[0] not in "#;=[" and not inblock else None
    return LoaderConfig(tuple(stored), high, dropped)


def visible_names(names: Sequence[str]) -> dict[str, str]:
    """{name 9bootfat sees: file name given} for the files format writes in this order.

    An 8.3 name is seen lower-cased; a long name only as its alias, which
    format numbers from the count of long names on (its second pass; see
    imagebuild.fs.fat.format).
    """
    longs = [n for n in names if is_long_name(n)]
    seen: dict[str, str] = {}
    alias_id = len(longs)
    for name in names:
        if is_long_name(name):
            seen[make_alias(name, alias_id).lower()] = name
            alias_id += 1
        else:
            seen[name.lower()] = name
    return seen


def carries_loader(files: Sequence[tuple[str, bytes]]) -> bool:
    """Whether the boot FAT holds 9bootfat (then check_boot_fat applies)."""
    return any(name.lower() == LOADER for name, _ in files)


def check_boot_fat(files: Sequence[tuple[str, bytes]], where: str) -> None:
    """Raise BootLintError (one line, starting with `where`) unless 9bootfat can boot `files`.

    `files` are the FAT's root files as format will write them, in order.
    Without plan9.ini the loader prompts for a bootfile: nothing to check.
    """
    data = {name.lower(): content for name, content in files}
    if CONFIG not in data:
        return
    ini = f"{where}: {CONFIG}"
    config = read_config(data[CONFIG])
    if config.high_water > BOOTARGSLEN:
        raise BootLintError(
            f"{ini}: needs {config.high_water} bytes of 9bootfat's configuration area, which "
            f"holds {BOOTARGSLEN} (sub.c configure: BOOTARGSLEN, not bounds-checked)"
        )
    if config.dropped is not None:
        raise BootLintError(
            f"{ini}: its last line {config.dropped[:60]!r} has no line end, and 9bootfat "
            "never reads it (sub.c readline returns 0 at the end of the file)"
        )
    value = config.get("bootfile")
    if value is None:
        return
    key = f"{ini}: bootfile={value}"
    if len(value) > BOOTFILE_MAX:
        raise BootLintError(
            f"{key[:200]}: {len(value)} bytes; 9bootfat copies it into a {MAXPATH}-byte path "
            f"buffer, so at most {BOOTFILE_MAX} (fat.c start: char path[Maxpath], "
            "sub.c getconf)"
        )
    path = value.rsplit("!", 1)[-1]  # configure(): the part after the last '!'
    parts = [p for p in path.split("/") if p]
    if len(parts) != 1:
        raise BootLintError(
            f"{key}: 9bootfat walks the FAT for {path!r}, but the boot FAT holds only root "
            "files (fat.c fatwalk)"
        )
    wanted = parts[0]
    names = [name for name, _ in files]
    seen = visible_names(names)
    if wanted in seen:
        return
    lowered = {n.lower(): n for n in names}
    if wanted.lower() in lowered and not is_long_name(lowered[wanted.lower()]):
        raise BootLintError(
            f"{key}: 9bootfat compares lower-case 8.3 names (fat.c dirname, fatwalk): "
            f"write bootfile={value[: len(value) - len(wanted)]}{wanted.lower()}"
        )
    if wanted.lower() in lowered:
        name = lowered[wanted.lower()]
        alias = next(a for a, n in seen.items() if n == name)
        raise BootLintError(
            f"{key}: {name!r} has a long name, and 9bootfat sees only 8.3 names (fat.c "
            f"dirname skips long-name slots): it sees {alias!r}; give the file an 8.3 name"
        )
    raise BootLintError(
        f"{key}: no such file on the boot FAT; 9bootfat would print 'not found' "
        f"(fat.c fatwalk; the FAT holds {', '.join(sorted(seen))})"
    )
