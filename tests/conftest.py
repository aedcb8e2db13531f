"""Shared fixtures: capability checks that skip with a visible reason."""

from __future__ import annotations

import os
import shutil

import pytest


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces / raw sockets); CI runs as root")


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name} (Debian package {package}); .ci/run installs it")
    return path
