"""Plan 9 libc helpers (imagebuild.plan9.libc) against the C rules they follow."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imagebuild.plan9.libc import cdiv, getfields, strtoll, strtoull, tokenize, uvlong, vlong

_TOKEN_TEXT = st.text(alphabet=" \t\r\n'ab\0é", max_size=40)


def _tokenize_reference(line: str) -> list[str]:
    """tokenize.c qtoken() transcribed pointer for pointer over a NUL-terminated copy."""
    buf = [*line, "\0"]
    args: list[str] = []
    i = 0
    while True:
        while buf[i] != "\0" and buf[i] in " \t\r\n":
            i += 1
        if buf[i] == "\0":
            return args
        out = t = i
        quoting = False
        while buf[t] != "\0" and (quoting or buf[t] not in " \t\r\n"):
            if buf[t] != "'":
                buf[out] = buf[t]
                out, t = out + 1, t + 1
                continue
            if not quoting:
                quoting, t = True, t + 1
                continue
            if buf[t + 1] != "'":
                quoting, t = False, t + 1
                continue
            t += 1
            buf[out] = buf[t]
            out, t = out + 1, t + 1
        token_end = out
        if buf[out] != "\0":
            buf[out] = "\0"
            if t == out:
                t += 1
        args.append("".join(buf[i:token_end]))
        i = t


@given(_TOKEN_TEXT)
def test_tokenize_matches_qtoken(line: str) -> None:
    if "\0" in line:  # C stops at the NUL; the callers never pass one
        line = line.split("\0", 1)[0]
    assert tokenize(line) == _tokenize_reference(line)


@given(_TOKEN_TEXT, st.integers(0, 6))
def test_tokenize_maxargs_keeps_the_first_fields(line: str, maxargs: int) -> None:
    assert tokenize(line, maxargs) == tokenize(line)[:maxargs]


def test_tokenize_quoting() -> None:
    assert tokenize("create /a 'b c' sys 775 d") == ["create", "/a", "b c", "sys", "775", "d"]
    assert tokenize("  x  'it''s'  ") == ["x", "it's"]
    assert tokenize("a'b c'd e") == ["ab cd", "e"]
    assert tokenize("''") == [""]
    assert tokenize("") == []


@given(st.integers(-(1 << 70), 1 << 70), st.integers(-(1 << 70), 1 << 70).filter(bool))
def test_cdiv_truncates_toward_zero(a: int, b: int) -> None:
    q = cdiv(a, b)
    assert abs(q) == abs(a) // abs(b)
    assert q == 0 or (q < 0) == ((a < 0) != (b < 0))


def test_vlong_wraps_like_twos_complement() -> None:
    assert vlong(1 << 63) == -(1 << 63)
    assert vlong(-1) == -1
    assert vlong((1 << 64) + 5) == 5
    assert uvlong(-1) == (1 << 64) - 1


def test_strtoull_base_zero_prefixes_and_end() -> None:
    assert strtoull("0x1F rest") == (31, 4)
    assert strtoull("017") == (15, 3)
    assert strtoull("  -1") == ((1 << 64) - 1, 4)
    assert strtoull("x") == (0, 0)
    assert strtoull("99999999999999999999999") == ((1 << 64) - 1, 23)  # overflow saturates
    assert strtoull("0x") == (0, 0)  # the prefix was eaten, no digit followed: end = start
    assert strtoull("१२") == (0, 0)  # only ASCII digits
    assert strtoll("18446744073709551615") == -1
    assert strtoll("12abc") == 12


def test_getfields_runs_of_separators_count_once() -> None:
    assert getfields("part  9fat 0\t 20", " \t", 5) == ["part", "9fat", "0", "20"]
    assert getfields("a b c d", " ", 2) == ["a", "b c d"]
    assert getfields("  ", " ", 4) == []
