"""doit tasks: one per disk target of the recipes.

    doit                     build the default targets into out/
    doit list                the targets, one line each
    doit root=/n/src9        build from a 9front tree (or set IMAGEBUILD_ROOT)
    doit set="plan9.console=1 config.all.gpu_mem=32"
                             template variables, applied to the targets that have them
    doit -n 2                build in parallel
    doit clean               remove the images

Each task depends on its recipe (and the recipes it extends), the templates
it renders and every input file it reads from the root, so a second run with
nothing changed does nothing and a changed kernel rebuilds only the targets
that carry it.  Without a root the tasks build from the generated demo root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from doit import get_var

from imagebuild.errors import ImageBuildError
from imagebuild.pipeline.demo import make_demo_root
from imagebuild.recipe.load import Recipe, list_recipes, load_recipe
from imagebuild.recipe.render import template_files

OUT = Path(os.environ.get("IMAGEBUILD_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

DOIT_CONFIG = {
    "dep_file": str(OUT / ".doit.db"),
    "verbosity": 2,
}


def _root() -> Path:
    given = get_var("root", None) or os.environ.get("IMAGEBUILD_ROOT")
    if given:
        return Path(given).resolve()
    return make_demo_root(OUT / "demo-root").resolve()


def _sets() -> list[str]:
    return str(get_var("set", "")).split()


def _target_task(recipe: Recipe, root: Path, sets: list[str]) -> Callable[[], dict[str, Any]]:
    output = OUT / recipe.output
    mine = [s for s in sets if s.split(".", 1)[0] in recipe.vars]
    set_args = [arg for s in mine for arg in ("--set", s)]

    def task() -> dict[str, Any]:
        return {
            "actions": [[
                sys.executable, "-m", "imagebuild", "build", recipe.name,
                "--root", str(root), "-o", str(output), "--plain", *set_args,
            ]],
            "file_dep": [
                *(str(p) for p in recipe.sources),
                *(str(p) for p in template_files(recipe)),
                *(str(root / rel) for rel in recipe.root_inputs()),
            ],
            "targets": [str(output)],
            "clean": True,
            # a different root or --set is a different build even where the files match;
            # the fs tree is summed up rather than listed (it can be 40 000 files), and only
            # for the targets doit runs: `list`, `clean` and other targets never read it
            "uptodate": [_ConfigUnchanged(recipe, root, mine)],
        }

    task.__doc__ = f"{recipe.output}: {recipe.description}"
    return task


class _ConfigUnchanged:
    """doit uptodate check: the root, the --set values and the fs tree's digest as last time.

    Computed only when doit considers running the task.  A tree whose protos
    cannot be read is "not up to date": the build then runs and says why in
    one line.
    """

    def __init__(self, recipe: Recipe, root: Path, sets: list[str]) -> None:
        self.recipe, self.root, self.sets = recipe, root, sets

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        import json

        try:
            fs = _fs_signature(self.recipe, self.root)
        except (ImageBuildError, OSError):
            return False
        config = json.dumps({"root": str(self.root), "set": self.sets, "fs": fs})
        task.value_savers.append(lambda: {"_imagebuild_config": config})
        return bool(values.get("_imagebuild_config") == config)


_fs_signatures: dict[tuple[object, ...], str] = {}


def _fs_signature(recipe: Recipe, root: Path) -> str:
    """A digest of every file the fs partition gets: path, source, mode, owner, size, mtime."""
    import hashlib

    from imagebuild.pipeline.build import fs_tree

    if recipe.fs.type == "none":
        return "none"
    key = (recipe.fs.protos, tuple(sorted(recipe.fs.binds.items())), recipe.fs.git_bind,
           recipe.objtype)
    if key not in _fs_signatures:
        digest = hashlib.sha256()
        for e in fs_tree(recipe, root, []):  # missing sources: the build reports them
            digest.update(f"{e.path}\0{e.source}\0{e.mode}\0{e.uid}\0{e.gid}\0{e.length}\0"
                          f"{e.mtime}\n".encode())
        _fs_signatures[key] = digest.hexdigest()
    return _fs_signatures[key]


def _register() -> list[str]:
    root = _root()
    sets = _sets()
    defaults = []
    for name in list_recipes():
        recipe = load_recipe(name)
        globals()[f"task_{name}"] = _target_task(recipe, root, sets)
        if recipe.default:
            defaults.append(name)
    return defaults


try:
    DOIT_CONFIG["default_tasks"] = _register()  # type: ignore[assignment]
except ImageBuildError as err:  # a bad recipe: one line, not a traceback
    print(f"dodo.py: {err}", file=sys.stderr)
    raise SystemExit(1) from None
