"""Shared fixtures: a generated 9front-like root and the built images of every target."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from imagebuild.pipeline.demo import DEMO_MARKER, make_demo_root

SOURCE_DATE_EPOCH = 1700000000  # 2023-11-14 22:13:20 UTC


def _need(tool: str) -> None:
    """Skip the test without `tool`; under CI=true (where ./dev setup installs every tool)
    fail it instead, so a missing tool never passes a run in silence."""
    if shutil.which(tool) is None:
        message = f"{tool} is not installed: run ./dev setup"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: a missing tool fails the run)")
        pytest.skip(message)


def needs(*tools: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as pytestmark) as needing these commands on PATH."""
    return pytest.mark.needs_tool(*tools)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_tool(*names): commands the test runs (see _need)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        for tool in mark.args:
            _need(tool)


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root laid out like /n/src9 with every input of every recipe (not marked as demo)."""
    path = make_demo_root(tmp_path_factory.mktemp("root"))
    (path / DEMO_MARKER).unlink()
    return path


@pytest.fixture(scope="session")
def built(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every target built once from `root`, with SOURCE_DATE_EPOCH pinned."""
    from imagebuild.pipeline.build import BuildOptions, build
    from imagebuild.recipe.load import list_recipes, load_recipe

    out = tmp_path_factory.mktemp("out")
    images = {}
    for name in list_recipes():
        recipe = load_recipe(name)
        plan = build(recipe, BuildOptions(root=root, output=out / recipe.output,
                                          timestamp=SOURCE_DATE_EPOCH))
        images[name] = plan.output
    return images


@pytest.fixture
def sde(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(SOURCE_DATE_EPOCH))
    return SOURCE_DATE_EPOCH


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MTOOLS_SKIP_CHECK"] = "1"
    return env
