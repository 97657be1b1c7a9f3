"""Proto files: the file lists disk/mkfs copies into a new file system (libdisk's rdproto).

A proto file lists one file per line, indented under its directory:

    name  mode  uid  gid  source

Indentation counts a space as 1 and a tab as 8; a line more indented than a
directory names a file inside it.  `mode` is `[d][a][l]NNN` (octal) or `-`;
`uid`, `gid` and `source` may be `-` or left out; `$name` in the name, mode,
uid or gid field is replaced by a variable (mkfs reads the environment: the
dist protos use `$objtype`).  A `+` or `*` as the first entry under a
directory copies the source directory's contents: `+` recursively, `*` only
its files.  A line containing `=` sets an option (`mode=`, `uid=`, `gid=`,
`skip=REGEX`) for the lines that follow at its indentation and deeper.

This module reads protos exactly as sys/src/libdisk/proto.c (2024) does:
`read_proto` concatenates its files like `cat $proto $bootproto | disk/mkfs`
and yields the entries in the order mkfs creates them.  Where mkfs only warns
(a bad mode, an unknown option, an undefined variable) we raise ProtoError
naming the proto file and line instead; a missing source is an error too
unless the caller collects them (`on_missing`), and a missing directory
named with a `d` mode is made empty.

Sources are looked up under a source root (mkfs -s), through optional binds
that replace or union subtrees (the dist mkfile's `mk binds`).
"""

from imagebuild.fs.proto.entry import (
    DMAPPEND,
    DMDIR,
    DMEXCL,
    DMTMP,
    MissingSource,
    ProtoEntry,
    ProtoError,
)
from imagebuild.fs.proto.modes import parse_mode_option, plan9_regex
from imagebuild.fs.proto.reader import missing_summary, read_proto
from imagebuild.fs.proto.source import SourceTree, cleanname

__all__ = [
    "DMAPPEND",
    "DMDIR",
    "DMEXCL",
    "DMTMP",
    "MissingSource",
    "ProtoEntry",
    "ProtoError",
    "SourceTree",
    "cleanname",
    "missing_summary",
    "parse_mode_option",
    "plan9_regex",
    "read_proto",
]
