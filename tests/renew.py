"""A fresh certificate for an existing code-signing name, for the freshness tests.

`trustboot ca renew NAME --days N` where it exists (the CA-lifecycle half of issue 12);
before that, the same effect with the commands this version has: revoke the current
certificate as superseded, then issue the name again (a new key, the same subject, which is
what the firmware's `imgverify --signer NAME` matches)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from trustboot.cli.main import cli


def renew_available() -> bool:
    from trustboot.cli.ca import command

    return "renew" in getattr(command, "commands", {})


def renew_signer(name: str, *, days: int, pki: Path, ca_pass: Path, key_pass: Path,
                 key_type: str = "rsa-2048") -> None:
    if renew_available():
        steps = [["ca", "renew", name, "--days", str(days), "--pki", str(pki),
                  "--passphrase-file", str(ca_pass)]]
    else:
        steps = [["ca", "revoke", name, "--reason", "superseded", "--pki", str(pki),
                  "--passphrase-file", str(ca_pass)],
                 ["ca", "issue", "codesign", name, "--days", str(days), "--pki", str(pki),
                  "--key-type", key_type, "--passphrase-file", str(ca_pass),
                  "--key-passphrase-file", str(key_pass)]]
    for args in steps:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)
