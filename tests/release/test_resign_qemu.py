"""Freshness under a real iPXE (QEMU, TCG): a release signed by a short-lived signer stops
booting once the guest clock passes the signer's notAfter + 12 h 30 min, and boots again at
that same clock once `trustboot resign` has re-signed it with a fresh certificate.

Also measures the replay window's edge: the same firmware and release accepted with the
guest clock started 90 s inside notAfter + 12h30m and refused 30 s outside it (the guest
clock only moves forward during the boot, so "outside" stays outside). Needs
TRUSTBOOT_IPXE_SRC (skipped with the reason otherwise)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from tests.ipxe_qemu import boot
from tests.release.conftest import PASSPHRASE
from tests.release.test_attack_lab import MARKER, STOP, Release, _released
from tests.renew import renew_signer
from trustboot.cli.main import cli

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

ENTRY_OK = "booting Debian kernel"  # echoed by the entry script: its signature verified


def _boot(rel: Release, rtc: dt.datetime, stop: tuple[str, ...]) -> str:
    return boot(rel.lkrn, {}, "#!ipxe\necho unused\n", restrict=False, rtc=rtc, timeout=300,
                stop_on=stop)


def _cli(*args: str) -> str:
    r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == 0, (args, r.output)
    return r.output


def test_expired_short_signer_refused_then_resigned_release_boots(
        session_ca: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("resign-qemu")
    with _released(session_ca, base, "short-signer", "1d") as rel:
        pki = rel.dir / "pki"
        cert = x509.load_pem_x509_certificate((pki / "issued/short-signer.crt").read_bytes())
        edge = cert.not_valid_after_utc + dt.timedelta(hours=12, minutes=30)

        inside = _boot(rel, edge - dt.timedelta(seconds=90), (ENTRY_OK, *STOP))
        assert ENTRY_OK in inside, inside[-3000:]
        outside = _boot(rel, edge + dt.timedelta(seconds=30), (ENTRY_OK, *STOP))
        assert ENTRY_OK not in outside and MARKER not in outside, outside[-3000:]
        assert "verifying https://10.0.2.2" in outside, outside[-3000:]

        # a fresh certificate with the same name, valid 30 days (tests/renew.py)
        pw = rel.dir / "pass.txt"
        renew_signer("short-signer", days=30, pki=pki, ca_pass=pw)
        out = json.loads(_cli(
            "resign", f"file://{rel.origin}", "--key", "short-signer", "--pki", str(pki),
            "--passphrase-file", str(pw), "--signer", "short-signer",
            "--public-url", f"https://127.0.0.1:{rel.port}/", "--json"))
        assert out["changed"] and out["previous"] == rel.rid
        assert out["rewritten"] == ["boot.ipxe"]
        later = _boot(rel, edge + dt.timedelta(seconds=30), STOP)
        assert MARKER in later, later[-3000:]
        assert f"(release {rel.rid})" in later  # the menu text keeps the content's id
    assert PASSPHRASE  # the lab's passphrase file holds it
