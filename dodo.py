"""doit tasks: one per disk target of the recipes.

    doit                     build the default targets into out/
    doit list                the targets, one line each
    doit root=/n/src9        build from a 9front tree (or set IMAGEBUILD_ROOT)
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

from imagebuild.demo import make_demo_root
from imagebuild.errors import ImageBuildError
from imagebuild.recipe import Recipe, list_recipes, load_recipe
from imagebuild.render import template_files

OUT = Path("out")
OUT.mkdir(exist_ok=True)

DOIT_CONFIG = {
    "dep_file": str(OUT / ".doit.db"),
    "verbosity": 2,
}


def _root() -> Path:
    given = get_var("root", None) or os.environ.get("IMAGEBUILD_ROOT")
    if given:
        return Path(given).resolve()
    return make_demo_root(OUT / "demo-root").resolve()


def _target_task(recipe: Recipe, root: Path) -> Callable[[], dict[str, Any]]:
    output = OUT / recipe.output

    def task() -> dict[str, Any]:
        return {
            "actions": [[
                sys.executable, "-m", "imagebuild", "build", recipe.name,
                "--root", str(root), "-o", str(output), "--plain",
            ]],
            "file_dep": [
                *(str(p) for p in recipe.sources),
                *(str(p) for p in template_files(recipe)),
                *(str(root / rel) for rel in recipe.root_inputs()),
            ],
            "targets": [str(output)],
            "clean": True,
            # a different root is a different build even where the files match
            "uptodate": [_root_unchanged(root)],
        }

    task.__doc__ = f"{recipe.output}: {recipe.description}"
    return task


def _root_unchanged(root: Path) -> Any:
    from doit.tools import config_changed

    return config_changed({"root": str(root)})


def _register() -> list[str]:
    root = _root()
    defaults = []
    for name in list_recipes():
        recipe = load_recipe(name)
        globals()[f"task_{name}"] = _target_task(recipe, root)
        if recipe.default:
            defaults.append(name)
    return defaults


try:
    DOIT_CONFIG["default_tasks"] = _register()  # type: ignore[assignment]
except ImageBuildError as err:  # a bad recipe: one line, not a traceback
    print(f"dodo.py: {err}", file=sys.stderr)
    raise SystemExit(1) from None
