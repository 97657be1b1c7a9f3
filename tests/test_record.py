"""Every `Record` class spells its fields the same way in all four places.

A record names each field in `FIELDS`, `__slots__`, a class annotation and an
`__init__` parameter that is stored as it is given; equality, hash, repr and
`replace()` go by `FIELDS`.  A field added to one place and not the others
would compare, print or copy records wrongly without failing elsewhere, so
every subclass in the package is checked here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import imagebuild
from imagebuild.util.record import Record


def _record_classes() -> list[type[Record]]:
    for module in pkgutil.walk_packages(imagebuild.__path__, "imagebuild."):
        if not module.name.endswith(".__main__"):  # that one runs the program
            importlib.import_module(module.name)
    found: list[type[Record]] = []
    todo = list(Record.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


RECORDS = _record_classes()


def test_the_build_path_records_are_found() -> None:
    names = {cls.__name__ for cls in RECORDS}
    assert {"DirEntry", "FatParams", "Recipe", "BuildPlan", "Plan9Partition"} <= names


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: cls.__qualname__)
def test_fields_slots_annotations_and_init_agree(cls: type[Record]) -> None:
    assert cls.FIELDS, "a record without fields"
    assert tuple(cls.__slots__) == cls.FIELDS
    assert tuple(inspect.get_annotations(cls)) == cls.FIELDS
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert tuple(params) == cls.FIELDS
    assert not set(cls.FIELDS) & {"values", "as_dict", "replace"}


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: cls.__qualname__)
def test_init_stores_every_field_as_given(cls: type[Record]) -> None:
    given = {name: object() for name in cls.FIELDS}
    record = cls(**given)
    assert all(getattr(record, name) is value for name, value in given.items())
    assert record.values() == tuple(given.values())
    assert record == cls(**given)
    assert repr(record).startswith(f"{cls.__name__}({cls.FIELDS[0]}=")


def test_replace_changes_only_the_named_fields_and_refuses_others() -> None:
    cls = next(cls for cls in RECORDS if len(cls.FIELDS) >= 2)
    given = {name: object() for name in cls.FIELDS}
    record = cls(**given)
    first, second = cls.FIELDS[:2]
    changed = record.replace(**{first: "new"})
    assert getattr(changed, first) == "new"
    assert getattr(changed, second) is given[second]
    assert getattr(record, first) is given[first]
    assert changed != record
    with pytest.raises(TypeError, match="no fields"):
        record.replace(not_a_field=1)
