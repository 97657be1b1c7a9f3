"""The option syntax of proto files: regexp(6) `skip=` patterns and `mode=` specifications."""

from __future__ import annotations

import re

from imagebuild.fs.proto.entry import DMAPPEND, DMEXCL, DMTMP, MODE_MASK


def plan9_regex(pattern: str) -> re.Pattern[str]:
    """Compile a regexp(6) pattern (as regcomp does) into a Python search pattern.

    regexp(6) has `. * + ? | ( ) [ ] ^ $` and `\\c` for a literal c; braces
    and Python's backslash classes mean nothing special there.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
                out.append(c)
            elif c in "[&~|":
                out.append("\\" + c)
            else:
                out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a leading ] is literal
                out.append("\\]")
                i += 1
        elif c in "{}":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise ValueError(str(e)) from None


def parse_mode_option(spec: str, mask: int, mode: int) -> tuple[int, int] | None:
    """proto.c parsemode(): apply a `mode=` option to (mask, mode); None if malformed.

    `[ugoa]*[-+=][rwxalt]*` changes the named permission bits (and the
    append, exclusive and temporary bits); a leading octal number sets the
    rw bits outright and forgets earlier options.
    """
    op = ""
    setall = False
    newmode = 0
    newmask = DMAPPEND | DMEXCL | DMTMP
    if spec and spec[0] in "01234567":
        digits = re.match(r"[0-7]+", spec)
        assert digits is not None
        newmask = 0o666
        newmode = int(digits.group(0), 8) & MODE_MASK
        op = "="
        letters = "!"  # proto.c points its cursor at the string "!"
    else:
        i = 0
        while i < len(spec) and not op:
            c = spec[i]
            if c in "-+=":
                op = c
            elif c in _WHO_BITS:
                newmask |= _WHO_BITS[c]
            else:
                return None
            i += 1
        if i == 0:  # an empty spec
            newmask |= 0o666
        letters = spec[i:]
    for c in letters:
        if c == "!":
            setall = True
        elif c in _WHAT_BITS:
            newmode |= _WHAT_BITS[c]
        else:
            return None
    if op in ("+", "-"):
        newmask &= newmode
    if op == "-":
        newmode = ~newmode & MODE_MASK
    if setall:
        mask = 0
    mask |= newmask
    mode = (mode & ~newmask) | (newmode & newmask)
    return mask & MODE_MASK, mode & MODE_MASK


_WHO_BITS = {"a": 0o666, "u": 0o600, "g": 0o060, "o": 0o006}
_WHAT_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "a": DMAPPEND, "l": DMEXCL, "t": DMTMP}


__all__ = ["parse_mode_option", "plan9_regex"]
