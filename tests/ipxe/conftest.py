"""Fixtures shared by the iPXE tests: a throwaway pki and the CLI environment (fake tree),
and the real tree with the cached test pki its firmware builds are cached for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.ipxe.fake_tree import fake_env, fake_env_passthrough, fake_sandbox, make_fake_tree
from tests.ipxe.testpki import TestPki, cached_pki, make_pki
from tests.ipxe_qemu import cache_root, ipxe_src_or_skip
from trustboot.ipxe import build as B

FAKE_TOOLCHAIN = {"gcc": "gcc (fake)", "make": "make (fake)"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def real_src() -> Path:
    """$TRUSTBOOT_IPXE_SRC (skips with the reason without it, QEMU or the toolchain)."""
    return ipxe_src_or_skip()


@pytest.fixture(scope="module")
def real_pki(real_src: Path) -> TestPki:
    """The test pki cached across runs, so firmware built for it is cached too."""
    return cached_pki(cache_root() / "pki", "main")


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake make's knobs; every fake build appends its target to the returned file."""
    require_tool("make", "make")
    log = tmp_path / "runs.log"
    log.write_text("")
    for k, v in fake_env().items():
        monkeypatch.setenv(k, v)
    fake_env_passthrough(monkeypatch)
    # in the sandbox, the fake make writes its runs (and FAKE_HOLD) under tmp_path
    fake_sandbox(monkeypatch, [tmp_path])
    monkeypatch.setenv("FAKE_RUNS", str(log))
    return log


@pytest.fixture
def env(tmp_path: Path, runs: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fake tree, a private cache, and the fake toolchain (make itself is real)."""
    tree = make_fake_tree(tmp_path / "ipxe")
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)
    monkeypatch.delenv("TRUSTBOOT_PKI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(B, "check_toolchain", lambda targets: dict(FAKE_TOOLCHAIN))
    return {"tree": tree, "runs": runs, "out": tmp_path / "ipxe-build",
            "cache": tmp_path / "cache" / "ipxe"}
