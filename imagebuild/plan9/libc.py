"""Plan 9 libc behaviour that 9front's tools rely on, for the modules that replay them.

9front's disk tools and file servers parse their input with libc: prep and
fdisk split command lines with tokenize() and read numbers with strtoull();
prep reads its table with getfields(); hjfs's console tokenizes its commands.
Their arithmetic is C's on 64-bit `vlong`s: it wraps modulo 2**64 and
division truncates toward zero.  Python's integers do neither, so every
module that must give 9front's answers uses these helpers.

Every function here is pure and works on `str` (the callers decode bytes
first); none raises except where noted.

References: sys/src/libc/port/tokenize.c, getfields.c, strtoull.c,
strtoll.c; the C semantics of 9front's compilers (6c, 8c): two's complement
`vlong`, truncating `/`.
"""

from __future__ import annotations

UVLONG_MASK = (1 << 64) - 1  # all the bits of a uvlong
QSEP = " \t\r\n"  # tokenize.c qsep: the blanks tokenize splits on
_SPACE = " \t\n\f\r\v"  # isspace() in strtoull's leading-blank skip


def vlong(value: int) -> int:
    """`value` as a C vlong: wrapped modulo 2**64 into [-2**63, 2**63)."""
    value &= UVLONG_MASK
    return value - (1 << 64) if value >> 63 else value


def uvlong(value: int) -> int:
    """`value` as a C uvlong: wrapped modulo 2**64 into [0, 2**64)."""
    return value & UVLONG_MASK


def cdiv(a: int, b: int) -> int:
    """C's `a / b` on signed integers: the quotient truncated toward zero.

    Not wrapped (wrap with vlong() where the operands are vlongs).  Raises
    ZeroDivisionError when b is 0; callers that take b from input check first.
    """
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def strtoull(text: str, pos: int = 0) -> tuple[int, int]:
    """libc strtoull(s, &end, 0) from index `pos`: (value, index after the number).

    Leading blanks are skipped, then an optional sign; base 0 reads `0x..` as
    hex, a leading `0` as octal, else decimal.  The value is a uvlong (a
    negative number is its two's complement); an overflow gives 2**64-1.
    With no digits the value is 0 and the index is `pos` (libc's end = s).
    Digits are ASCII only (strtoull.c compares against '0'..'9', 'a'..'z').
    """
    p = pos
    while p < len(text) and text[p] in _SPACE:
        p += 1
    neg = False
    if p < len(text) and text[p] in "+-":
        neg = text[p] == "-"
        p += 1
    base = 10
    if p < len(text) and text[p] == "0":
        base = 8
        if p + 1 < len(text) and text[p + 1] in "xX":
            p += 2
            base = 16
    value = ndig = 0
    overflow = False
    while p < len(text):
        c = text[p]
        digit = int(c, 36) if c.isascii() and c.isalnum() else 36
        if digit >= base:
            break
        value = value * base + digit
        if value > UVLONG_MASK:
            overflow = True
        p += 1
        ndig += 1
    if ndig == 0:
        return 0, pos
    if overflow:
        return UVLONG_MASK, p
    return (-value) & UVLONG_MASK if neg else value, p


def strtoll(text: str) -> int:
    """libc strtoll(s, 0, 0) as prep reads its table: the numeric prefix as a vlong, 0 if none."""
    value, _ = strtoull(text)
    return vlong(value)


def tokenize(line: str, maxargs: int | None = None) -> list[str]:
    """libc tokenize(s, args, maxargs): fields split on blanks (QSEP), rc-style quoting.

    Inside '...' blanks are kept and `''` is one quote; the quotes themselves
    are dropped.  At most `maxargs` fields are returned (None: no limit); as
    in libc, text after the last field taken is ignored.
    """
    args: list[str] = []
    i, n = 0, len(line)
    while maxargs is None or len(args) < maxargs:
        while i < n and line[i] in QSEP:
            i += 1
        if i >= n:
            break
        token: list[str] = []
        quoting = False
        while i < n and (quoting or line[i] not in QSEP):
            c = line[i]
            if c != "'":
                token.append(c)
                i += 1
            elif not quoting:
                quoting = True
                i += 1
            elif i + 1 < n and line[i + 1] == "'":  # a doubled quote inside quotes
                token.append("'")
                i += 2
            else:
                quoting = False
                i += 1
        args.append("".join(token))
    return args


def getfields(text: str, seps: str, maxfields: int) -> list[str]:
    """libc getfields(str, args, maxfields, 1, seps): runs of separators count as one.

    The last of `maxfields` fields keeps the rest of the text, separators and
    all (libc stops splitting there).
    """
    fields: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in seps:
            i += 1
        if i >= n:
            break
        if len(fields) == maxfields - 1:
            fields.append(text[i:])
            break
        j = i
        while j < n and text[j] not in seps:
            j += 1
        fields.append(text[i:j])
        i = j
    return fields
