from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from trustboot.cli.main import cli

PASS = "secure boot passphrase"

Run = Callable[..., Result]


@pytest.fixture
def run() -> Run:
    def _run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return _run


@pytest.fixture(scope="session")
def pw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("sbpw") / "pw"
    p.write_text(PASS + "\n")
    p.chmod(0o600)
    return p


def _init(pki: Path, pw: Path, name: str) -> Path:
    pki.mkdir(mode=0o755)
    r = CliRunner().invoke(cli, ["secureboot", "init", "--pki", str(pki), "--name", name,
                                 "--passphrase-file", str(pw)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return pki


@pytest.fixture(scope="session")
def keyset_pki(tmp_path_factory: pytest.TempPathFactory, pw: Path) -> Path:
    """A key set made once per session; copy it before changing anything in it."""
    return _init(tmp_path_factory.mktemp("sb") / "pki", pw, "Test Boot")


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory, pw: Path) -> Path:
    """A second, unrelated key set with the same names (a look-alike)."""
    return _init(tmp_path_factory.mktemp("sb-other") / "pki", pw, "Test Boot")


@pytest.fixture
def pki_copy(keyset_pki: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "pki"
    shutil.copytree(keyset_pki, dst, symlinks=True)
    return dst
