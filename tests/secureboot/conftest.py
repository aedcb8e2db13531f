from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.ipxe.testpki import cached_pki
from tests.ipxe_qemu import DONE_MARKER, build_test_ipxe, cache_root, ipxe_src_or_skip
from trustboot.cli.main import cli
from trustboot.secureboot import keyset

PASS = "secure boot passphrase"
EMBED_MARKER = "TRUSTBOOT-SB-EMBED-RAN"

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


EMBED_SCRIPT = f"#!ipxe\necho {EMBED_MARKER}\necho {DONE_MARKER}\n"


@pytest.fixture(scope="session")
def unsigned(keyset_pki: Path) -> dict[str, bytes]:
    """ipxe.efi and snponly.efi (real iPXE, unsigned) whose embedded script prints
    EMBED_MARKER: the marker on the console means the firmware started the binary."""
    ipxe_src_or_skip()
    # Any root will do (the embedded script verifies nothing); the cached test pki's keeps
    # the build cached across runs.
    trust = [cached_pki(cache_root() / "pki", "main").root]
    return {t: build_test_ipxe(trust, embed=EMBED_SCRIPT,
                               target=f"bin-x86_64-efi/{t}").read_bytes()
            for t in ("ipxe.efi", "snponly.efi")}


@pytest.fixture(scope="session")
def vars_file(keyset_pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    if not template.is_file():
        pytest.skip("needs OVMF: apt-get install ovmf")
    out = tmp_path_factory.mktemp("sbvars") / "vars.fd"
    out.write_bytes(keyset.ovmf_vars(keyset.load_keyset(keyset_pki), template))
    return out


