"""The replay window: what iPXE's own time rule (ported in cms.verify) allows, to the second."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from click.testing import CliRunner

from trustboot.cli.main import cli
from trustboot.cms.freshness import format_duration, replay_window
from trustboot.cms.verify import TIMESTAMP_ERROR_MARGIN

T = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def test_window_numbers() -> None:
    w = replay_window(T, now=T - dt.timedelta(days=7), not_before=T - dt.timedelta(days=8))
    assert TIMESTAMP_ERROR_MARGIN == dt.timedelta(hours=12, minutes=30)  # config/crypto.h
    assert w.window == dt.timedelta(days=7, hours=12, minutes=30)
    assert w.lifetime == dt.timedelta(days=8)
    assert w.refused_after == T + dt.timedelta(hours=12, minutes=30, seconds=1)
    assert w.to_json()["text"] == "7d 12h30m" and "7d 12h30m" in w.describe()
    # past the end: nothing left to replay
    assert replay_window(T, now=T + dt.timedelta(days=1)).window == dt.timedelta(0)
    assert format_duration(dt.timedelta(days=730, hours=12, minutes=30)) == "730d 12h30m"
    assert format_duration(dt.timedelta(days=2)) == "2d"
    assert format_duration(-dt.timedelta(hours=1)) == "-1h00m"


def _sign(tmp_path: Path, pki: Path, ca_pass: Path, key_pass: Path) -> Path:
    image = tmp_path / "kernel"
    image.write_bytes(b"kernel" * 100)
    r = CliRunner().invoke(cli, ["ca", "issue", "codesign", "week", "--days", "7", "--pki",
                                 str(pki), "--key-type", "rsa-2048", "--passphrase-file",
                                 str(ca_pass), "--key-passphrase-file", str(key_pass)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["sign", "--key", "week", "--pki", str(pki),
                                 "--passphrase-file", str(key_pass), str(image)])
    assert r.exit_code == 0, r.output
    return image


def test_verify_reports_window_and_its_boundary_is_ipxes(tmp_path: Path) -> None:
    """`verify --at` accepts at exactly notAfter + 12h30m and refuses one second later:
    the window printed is the one the rules enforce."""
    secrets = tmp_path / "s"
    secrets.mkdir(mode=0o700)
    ca_pass, key_pass = secrets / "ca", secrets / "key"
    ca_pass.write_text("ca pass phrase\n")
    key_pass.write_text("key pass phrase\n")
    ca_pass.chmod(0o600)
    key_pass.chmod(0o600)
    pki = tmp_path / "pki"
    r = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "rsa-3072",
                                 "--passphrase-file", str(ca_pass)])
    assert r.exit_code == 0, r.output
    image = _sign(tmp_path, pki, ca_pass, key_pass)
    r = CliRunner().invoke(cli, ["verify", str(image), "--pki", str(pki), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    window = out["replay_window"]
    assert 7 * 86400 + 45000 - 300 < window["window_seconds"] <= 7 * 86400 + 45000
    assert window["lifetime_seconds"] == 8 * 86400  # notBefore backdated a day
    refused = dt.datetime.fromisoformat(window["refused_after"])
    last_ok = refused - dt.timedelta(seconds=1)
    for at, code in ((last_ok, 0), (refused, 4)):
        r = CliRunner().invoke(cli, ["verify", str(image), "--pki", str(pki), "--at",
                                     f"@{int(at.timestamp())}"])
        assert r.exit_code == code, (at, r.output)
    text = CliRunner().invoke(cli, ["verify", str(image), "--pki", str(pki)])
    assert "replay window 7d 12h" in text.output
