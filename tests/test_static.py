"""The code's own standards, checked with the suite: ruff clean and mypy --strict over the
package, the tests and the benchmarks (pyproject.toml holds both tools' settings).

They run wherever the dev extra is installed (`.ci/setup --tests` installs it, so CI
enforces both) and skip with the reason elsewhere."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: pip install -e '.[dev]'")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=600)


def test_ruff_is_clean() -> None:
    _tool("ruff")
    proc = _run("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    _tool("mypy")
    # A private cache: never the checkout's (a fresh clone in CI has none anyway).
    proc = _run("mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "trustboot",
                "tests", "bench")
    assert proc.returncode == 0, proc.stdout + proc.stderr
