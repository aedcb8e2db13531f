"""Shared fixtures: capability checks that skip with a visible reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustboot.fsutil import ensure_private_dir


@pytest.fixture(scope="session", autouse=True)
def _private_build_caches(tmp_path_factory: pytest.TempPathFactory,
                          pytestconfig: pytest.Config) -> Iterator[None]:
    """No test writes into the user's real cache (~/.cache/trustboot).

    trustboot's default cache (TRUSTBOOT_CACHE_DIR) and the real-iPXE harness cache
    (TRUSTBOOT_TEST_CACHE, unless set explicitly) live under pytest's own per-user temp
    root (0700, checked by pytest), shared by later sessions so real iPXE builds are not
    redone every run; with --basetemp they live in that session's temp dir.
    """
    base = tmp_path_factory.getbasetemp()
    root = (base if pytestconfig.option.basetemp else base.parent) / "trustboot-cache"
    ensure_private_dir(root)
    patch = pytest.MonkeyPatch()
    patch.setenv("TRUSTBOOT_CACHE_DIR", str(root / "default"))
    if not os.environ.get("TRUSTBOOT_TEST_CACHE"):
        ensure_private_dir(root / "tests")
        patch.setenv("TRUSTBOOT_TEST_CACHE", str(root / "tests"))
    yield
    patch.undo()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces / raw sockets); CI runs as root")


def dir_of_nobody(path: Path) -> Path:
    """A new 0755 directory owned by uid 65534: another local user's (skips unless root)."""
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another uid needs root (CI runs as root)")
    path.mkdir(mode=0o755)
    os.chown(path, 65534, 65534)
    return path


def give_group_to_another_user(path: Path) -> None:
    """Give ``path`` to gid 65534 (nogroup, nobody's), so its group write lets another
    user in: group write of our own user-private group is no one else's and passes
    (trustboot.writers). Skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user's group needs root (CI runs as root)")
    os.chown(path, -1, 65534, follow_symlinks=False)


def as_nobody(*argv: str, cwd: Path) -> None:
    """Run ``argv`` as uid/gid 65534 in ``cwd`` (entered as root first, so the directories
    above it need not be open to nobody)."""
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                   check=True, cwd=cwd)


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name} (Debian package {package}); .ci/run installs it")
    return path
