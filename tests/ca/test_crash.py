"""A process killed at every commit point of `ca issue` and `ca revoke` leaves a store
that loads, verifies, and accepts the same operation again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trustboot.ca.store import CertificateAuthority

from .conftest import init_ca, issue

CRASHPOINT = Path(__file__).with_name("crashpoint.py")
pytestmark = pytest.mark.slow


def _run(pki: Path, secrets: Path, args: list[str], crash_at: int,
         count_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRASH_AT": str(crash_at)}
    if count_file is not None:
        env["CRASH_COUNT_FILE"] = str(count_file)
    return subprocess.run(
        [sys.executable, str(CRASHPOINT), *args, "--pki", str(pki), "--passphrase-file",
         str(secrets / "ca.pass")],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def small_ca(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Path:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    pki = tmp_path_factory.mktemp("crash") / "pki"
    init_ca(run, pki, secrets_dir, "--key-type", "ec-p256")
    assert issue(run, pki, secrets_dir, "codesign", "victim", "--key-type",
                 "ec-p256").exit_code == 0
    return pki


OPS = {
    "issue": ["ca", "issue", "codesign", "newcert", "--key-type", "ec-p256",
              "--key-passphrase-file", "{secrets}/key.pass"],
    "revoke": ["ca", "revoke", "victim"],
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_kill_at_every_commit_point(op: str, small_ca: Path, secrets_dir: Path,
                                    tmp_path: Path) -> None:
    args = [a.format(secrets=secrets_dir) for a in OPS[op]]
    probe = tmp_path / "probe"
    shutil.copytree(small_ca, probe)
    count_file = tmp_path / "count"
    r = _run(probe, secrets_dir, args, 0, count_file)
    assert r.returncode == 0, r.stderr
    points = int(count_file.read_text())
    assert points >= 4, "expected several commit points"
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        shutil.copytree(small_ca, pki)
        r = _run(pki, secrets_dir, args, k)
        assert r.returncode == -9, (k, r.stderr)
        ca = CertificateAuthority.open(pki)  # loads
        problems = ca.check()
        # Killed between index and CRL: the index is the truth; `ca crl` catches up.
        assert all("run `trustboot ca crl`" in p for p in problems), (k, problems)
        if problems:
            fix = _run(pki, secrets_dir, ["ca", "crl"], 0)
            assert fix.returncode == 0, fix.stderr
            assert CertificateAuthority.open(pki).check() == []
        # The operation can be run again and ends in the intended state.
        again = _run(pki, secrets_dir, args, 0)
        assert again.returncode == 0 or "already" in again.stderr, (k, again.stderr)
        ca = CertificateAuthority.open(pki)
        assert ca.check() == [], (k, ca.check())
        if op == "issue":
            assert ca.get("newcert").status == "valid"
            assert (pki / "private" / "newcert.key").stat().st_mode & 0o077 == 0
        else:
            assert ca.get("victim").status == "revoked"
            assert not (pki / "issued" / "victim.crt").exists()


def test_kill_init_at_every_commit_point(secrets_dir: Path, tmp_path: Path) -> None:
    args = ["ca", "init", "--key-type", "ec-p256"]
    count_file = tmp_path / "count"
    r = _run(tmp_path / "probe", secrets_dir, args, 0, count_file)
    assert r.returncode == 0, r.stderr
    points = int(count_file.read_text())
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        r = _run(pki, secrets_dir, args, k)
        assert r.returncode == -9, (k, r.stderr)
        if CertificateAuthority.exists(pki):
            assert CertificateAuthority.open(pki).check() == [], k
            continue
        # No index yet: not a CA. A new init sets the leftovers aside and succeeds.
        again = _run(pki, secrets_dir, args, 0)
        assert again.returncode == 0, (k, again.stderr)
        assert CertificateAuthority.open(pki).check() == []
        assert (pki / "private").stat().st_mode & 0o077 == 0
