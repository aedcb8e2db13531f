from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cms.pki import Material, make_material
from tests.keys.softhsm import Token, make_token


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    """A fresh token per test; SOFTHSM2_CONF points at it for in-process runs too."""
    tok = make_token(tmp_path / "hsm")
    for key, value in tok.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TRUSTBOOT_PKCS11_MODULE", str(tok.module))
    yield tok
