"""A fresh certificate for an existing code-signing name, for the freshness tests:
`trustboot ca renew NAME --days N` (same name, which is what the firmware's
`imgverify --signer NAME` matches)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from trustboot.cli.main import cli


def renew_signer(name: str, *, days: int, pki: Path, ca_pass: Path) -> None:
    args = ["ca", "renew", name, "--days", str(days), "--pki", str(pki),
            "--passphrase-file", str(ca_pass)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, (args, r.output)
