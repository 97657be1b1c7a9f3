"""A test that needs a missing command skips on a developer's machine and fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_a_missing_tool_fails_only_under_ci(tmp_path: Path, ci: str, outcome: str) -> None:
    (tmp_path / "test_needs.py").write_text(
        "from tests.conftest import needs\n\n\n"
        '@needs("imagebuild-no-such-tool")\n'
        "def test_it() -> None:\n"
        "    pass\n"
    )
    env = dict(os.environ, CI=ci, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_needs.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )
    assert outcome in done.stdout, done.stdout + done.stderr
    assert (done.returncode != 0) == bool(ci)
    if ci:  # an error in the test's setup: the run fails and says why
        assert "imagebuild-no-such-tool is not installed" in done.stdout


def test_every_tool_the_suite_needs_is_installed_by_dev_setup() -> None:
    """The Debian packages ./dev installs provide the commands the needs() marks name."""
    apt = (REPO / "dev").read_text()
    for package in ("qemu-utils", "qemu-system-x86", "mtools", "dosfstools", "fdisk", "parted",
                    "e2fsprogs", "gcc"):
        assert f" {package}" in apt.split("APT_PACKAGES=(", 1)[1].split(")", 1)[0] + " ", package
