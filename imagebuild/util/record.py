"""`Record`: the base of the small value classes on the build path.

A subclass names its fields in order in `FIELDS`, uses them as its
`__slots__` and writes its own `__init__`; `Record` gives it equality and a
hash over those values (as a tuple's), a `repr` that lists them and
`replace()`.  It stands in for `typing.NamedTuple`, which compiles each
class's code when the module is imported (about a quarter of a
millisecond a class, a large share of a build's start-up); unlike a tuple, a
record is not iterable, indexable or equal to a plain tuple.  Nor is it
frozen: the hash follows the values, so a record is treated as a value and
never changed once it is built (none is; `replace()` makes the changed copy).
tests/test_record.py checks that every subclass spells its fields alike in
`FIELDS`, `__slots__`, its annotations and `__init__`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self


class Record:
    """Equality, hash, repr and replace() over the values of `FIELDS`, in that order."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def values(self) -> tuple[Any, ...]:
        """The field values, in FIELDS order."""
        return tuple(getattr(self, name) for name in self.FIELDS)

    def as_dict(self) -> dict[str, Any]:
        """{field name: value}, in FIELDS order."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def replace(self, **changes: Any) -> Self:
        """A copy with the fields named in `changes` set to new values (TypeError for a name
        that is not a field); the others are shared, as NamedTuple._replace shares them."""
        unknown = changes.keys() - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no fields {sorted(unknown)}")
        new = object.__new__(type(self))
        for name in self.FIELDS:
            object.__setattr__(new, name, changes.get(name, getattr(self, name)))
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or type(other) is not type(self):
            return NotImplemented
        return self.values() == other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({shown})"
