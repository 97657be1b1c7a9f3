"""calc.y: the start and end expressions of fdisk's and prep's `a` and `.` commands.

    expr: NUMBER | '.' | '$' | '(' expr ')' | expr '+' expr | expr '-' expr
        | expr '*' expr | expr '/' expr | expr '%' | '-' expr

A NUMBER is strtoull's base-0 number, optionally followed by k, m, g or t
(case-insensitive): that many KiB/MiB/GiB/TiB in the editor's unit, rounded
down.  `.` is dot, `$` the largest sensible end, `N%` N percent of the
disk's size in units.  Arithmetic is on 64-bit vlongs: it wraps, and `/`
truncates toward zero, as in 9front.  As calc.y parses the whole text before
eval() divides, a syntax error anywhere is reported over a zero divisor.

Where we are stricter than 9front: parentheses nest at most MAX_NESTING deep
(9front's yacc stack holds 150 states and refuses somewhat deeper, with
"yacc stack overflow").

References: sys/src/cmd/disk/prep/calc.y (the grammar, yylex, the suffixes,
evaluate); sys/lib/yaccpar (YYMAXDEPTH).
"""

from __future__ import annotations

from imagebuild.plan9.libc import UVLONG_MASK, cdiv, strtoull, vlong

MAX_NESTING = 64  # parentheses inside each other
_SUFFIX_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}
_BLANKS = " \t\n\v\f\r"  # yylex's isspace()


class CalcError(ValueError):
    """calc.y's yyerror: `syntax error`, `division by zero` (eval), or nesting past MAX_NESTING."""


class _Calc:
    """The grammar of calc.y as precedence climbing.

    yacc's table: '+' '-' < '*' '/' < unary '-' = postfix '%', all left
    associative, so a term is any number of unary minuses, a primary, then any
    number of '%' — and the minuses apply before the percentages (`-5%` is
    `(-5)%`).
    """

    def __init__(self, text: str, dot: int, dollar: int, size: int, unit: int) -> None:
        self.text, self.pos = text, 0
        self.dot, self.dollar, self.size, self.unit = dot, dollar, size, unit
        self.nesting = 0
        self.zero_divisor = False  # eval()'s "division by zero", after the whole parse
        self.look = self._lex()

    def _lex(self) -> int | str | None:
        """calc.y yylex(): a number (int), a one-character token, or None at the end."""
        text = self.text
        while self.pos < len(text) and text[self.pos] in _BLANKS:
            self.pos += 1
        if self.pos >= len(text):
            return None
        c = text[self.pos]
        if "0" <= c <= "9":
            value, end = strtoull(text, self.pos)
            if end == self.pos:  # "0x" with no hex digit: the same token forever
                raise CalcError("syntax error")
            self.pos = end
            suffix = text[end].lower() if end < len(text) and text[end].isascii() else ""
            if suffix in _SUFFIX_SHIFT:
                self.pos += 1
                value = ((value << _SUFFIX_SHIFT[suffix]) & UVLONG_MASK) // self.unit
            return vlong(value)
        self.pos += 1
        return c

    def _next(self) -> None:
        self.look = self._lex()

    def parse(self) -> int:
        value = self._expr()
        if self.look is not None:
            raise CalcError("syntax error")
        if self.zero_divisor:
            raise CalcError("division by zero")
        return value

    def _expr(self) -> int:
        value = self._term()
        while self.look in ("+", "-"):
            op = self.look
            self._next()
            rhs = self._term()
            value = vlong(value + rhs if op == "+" else value - rhs)
        return value

    def _term(self) -> int:
        value = self._unary()
        while self.look in ("*", "/"):
            op = self.look
            self._next()
            rhs = self._unary()
            if op == "*":
                value = vlong(value * rhs)
            else:
                if rhs == 0:  # yyparse() reads on: a syntax error later still wins
                    self.zero_divisor = True
                else:
                    value = vlong(cdiv(value, rhs))
        return value

    def _unary(self) -> int:
        negations = 0
        while self.look == "-":
            negations += 1
            self._next()
        value = self._primary()
        if negations % 2:
            value = vlong(-value)
        while self.look == "%":  # FRAC: a percentage of the size
            self._next()
            value = vlong(cdiv(vlong(self.size * value), 100))
        return value

    def _primary(self) -> int:
        look = self.look
        if isinstance(look, int):
            self._next()
            return look
        if look == ".":
            self._next()
            return self.dot
        if look == "$":
            self._next()
            return self.dollar
        if look == "(":
            self.nesting += 1
            if self.nesting > MAX_NESTING:
                raise CalcError(f"syntax error: parentheses nested more than {MAX_NESTING} deep")
            self._next()
            value = self._expr()
            if self.look != ")":
                raise CalcError("syntax error")
            self._next()
            self.nesting -= 1
            return value
        raise CalcError("syntax error")


def parse_expr(text: str, dot: int, dollar: int, size: int, unit: int) -> int:
    """calc.y parseexpr(): the value of `text` in units (a vlong).

    `dot`, `dollar` and `size` are in units; `unit` is the unit's size in
    bytes (a sector for prep, a cylinder for fdisk) and scales the k/m/g/t
    suffixes.  Raises CalcError for anything calc.y rejects.
    """
    return _Calc(text, dot, dollar, size, unit).parse()
