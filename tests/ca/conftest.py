from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from trustboot.cli.main import cli

CA_PASS = "correct horse battery"
KEY_PASS = "key passphrase 1"


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("secrets")
    (d / "ca.pass").write_text(CA_PASS + "\n")
    (d / "key.pass").write_text(KEY_PASS + "\n")
    (d / "wrong.pass").write_text("not the passphrase\n")
    for f in d.iterdir():
        f.chmod(0o600)
    return d


Run = Callable[..., Result]


@pytest.fixture
def run() -> Run:
    def _run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return _run


def init_ca(run: Run, pki: Path, secrets_dir: Path, *extra: str) -> Result:
    r = run("ca", "init", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"), *extra)
    assert r.exit_code == 0, r.output
    return r


def issue(run: Run, pki: Path, secrets_dir: Path, profile: str, *args: str) -> Result:
    return run("ca", "issue", profile, *args, "--pki", str(pki), "--passphrase-file",
               str(secrets_dir / "ca.pass"), "--key-passphrase-file",
               str(secrets_dir / "key.pass"))


@pytest.fixture(scope="session")
def base_ca(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Path:
    """One CA (default RSA-4096 root) with a cert of each profile; copy before mutating."""
    pki = tmp_path_factory.mktemp("base") / "pki"
    r = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--passphrase-file",
                                 str(secrets_dir / "ca.pass")])
    assert r.exit_code == 0, r.output
    for profile, args in (("codesign", ["signer"]), ("server", ["boot.example.net",
                                                                 "192.0.2.10"]),
                          ("client", ["ipxe-client"])):
        r = CliRunner().invoke(cli, ["ca", "issue", profile, *args, "--pki", str(pki),
                                     "--passphrase-file", str(secrets_dir / "ca.pass"),
                                     "--key-passphrase-file", str(secrets_dir / "key.pass")])
        assert r.exit_code == 0, r.output
    return pki


def make_ec_ca(pki: Path, secrets_dir: Path, leaves: list[list[str]]) -> Path:
    """A fast CA (ECDSA P-256 everywhere) with the given leaves (["codesign", "NAME"], ...)."""
    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    init_ca(run, pki, secrets_dir, "--key-type", "ec-p256")
    for leaf in leaves:
        r = issue(run, pki, secrets_dir, leaf[0], *leaf[1:], "--key-type", "ec-p256")
        assert r.exit_code == 0, r.output
    return pki


@pytest.fixture
def pki(base_ca: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "pki"
    shutil.copytree(base_ca, dest)
    return dest


def trustboot_cmd() -> list[str]:
    return [sys.executable, "-m", "trustboot"]


def run_proc(*args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*trustboot_cmd(), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def spki(obj: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a certificate's or key's public key."""
    from cryptography.hazmat.primitives import serialization

    return bytes(obj.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
