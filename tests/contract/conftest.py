"""The CLI's documented contract (exit codes, --json, --help examples): one scratch CA for
the module, and each test its own caches, never the user's or an iPXE tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.publish.conftest import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("contract-pki"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTBOOT_PUBLISH_CACHE", str(tmp_path / "publish-cache.json"))
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)
