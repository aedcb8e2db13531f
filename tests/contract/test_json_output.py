"""`--json` output is what the README's "JSON output" table says: the top-level keys of
sign, verify, release, publish, publish list, resign and audit, exactly; and a failure
with --json is one JSON object on stderr whose exit_code is the process's, stdout empty
(verify's verdict excepted, as documented)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Pki
from trustboot.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"
ENTRY = b"#!ipxe\nchain --autofree https://boot.example.net/menu.ipxe\n"


def documented() -> dict[str, set[str]]:
    """command -> top-level keys, from the README's table."""
    text = README.read_text()
    section = text[text.index("### JSON output (`--json`)"):]
    section = section[:section.index("\n## ")]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        command = re.match(r"`([a-z ]+)`", cells[0])
        assert command is not None, line
        table[command.group(1)] = set(re.findall(r"`([a-z_0-9]+)`", cells[1]))
    return table


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def keys_of(result: Result, code: int = 0) -> set[str]:
    assert result.exit_code == code, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict), data
    return set(data)


def json_error(result: Result, code: int) -> dict[str, object]:
    """A failure under --json: one JSON object on stderr, its exit_code the process's."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    error = json.loads(lines[-1])
    assert {"error", "message", "hint", "exit_code"} <= set(error), error
    assert error["exit_code"] == code
    return dict(error)


def _signed_dir(pki: Pki, base: Path) -> Path:
    out = base / "rel"
    out.mkdir()
    (out / "boot.ipxe").write_bytes(ENTRY)
    (out / "vmlinuz").write_bytes(os.urandom(5000))
    pki.sign([out / "boot.ipxe", out / "vmlinuz"], out)
    return out


def test_the_table_names_every_command() -> None:
    assert set(documented()) == {"sign", "verify", "release", "publish", "publish list",
                                 "resign", "audit"}


def test_sign_and_verify_json(pki: Pki, tmp_path: Path) -> None:
    table = documented()
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"kernel" * 100)
    manifest = tmp_path / "m" / "manifest.json"
    signed = run("sign", str(image), "--key", "boot-signer", "--pki", str(pki.dir),
                 "--passphrase-file", str(pki.key_pass), "--manifest", str(manifest), "--json")
    assert keys_of(signed) == table["sign"]
    assert set(json.loads(manifest.read_text())) == table["sign"]
    entry = json.loads(signed.stdout)["files"][0]
    assert set(entry) == {"path", "size", "sha256", "signature", "hash", "signer_subject",
                          "signer_not_after", "chain_not_after"}
    ok = run("verify", str(image), "--pki", str(pki.dir), "--json")
    assert keys_of(ok) == table["verify"]
    # names are RFC 4514 in verify as in sign (and ca, origin check's TLS chain)
    subject = json.loads(ok.stdout)["signers"][0]["subject"]
    assert subject == json.loads(signed.stdout)["signer"] == entry["signer_subject"]
    assert subject.startswith("CN=boot-signer")
    # refused: the same document (ok false) on stdout, the error as JSON on stderr, exit 4
    refused = run("verify", str(image), "--pki", str(pki.dir), "--signer", "someone-else",
                  "--json")
    assert keys_of(refused, 4) == table["verify"]
    assert json.loads(refused.stdout)["ok"] is False
    error = json_error(refused, 4)
    assert error["rule"] == "signer-name" and error["error"] == "VerificationError"
    # sign's failures: nothing on stdout
    missing = run("sign", str(tmp_path / "nope"), "--key", "boot-signer", "--pki",
                  str(pki.dir), "--passphrase-file", str(pki.key_pass), "--json")
    json_error(missing, 1)
    assert missing.stdout == ""
    usage = run("sign", "--json")
    assert json_error(usage, 2)["error"] == "UsageError" and usage.stdout == ""


def test_publish_list_and_resign_json(pki: Pki, tmp_path: Path) -> None:
    table = documented()
    release = _signed_dir(pki, tmp_path)
    origin = f"file://{tmp_path}/srv"
    published = run("publish", str(release), origin, "--release-id", "r1", "--pki",
                    str(pki.dir), "--signer", "boot-signer", "--json")
    assert keys_of(published) == table["publish"]
    listed = run("publish", "list", origin, "--pki", str(pki.dir), "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert isinstance(rows, list) and rows
    assert all(set(row) == table["publish list"] for row in rows)
    resigned = run("resign", origin, "--key", "other-signer", "--pki", str(pki.dir),
                   "--passphrase-file", str(pki.key_pass), "--json")
    assert keys_of(resigned) == table["resign"]
    again = run("publish", str(release), origin, "--release-id", "r1", "--pki",
                str(pki.dir), "--signer", "other-signer", "--json")
    assert again.stdout == ""
    json_error(again, 4)


def test_release_json(pki: Pki, tmp_path: Path) -> None:
    table = documented()
    lab = tmp_path / "lab"
    (lab / "images").mkdir(parents=True)
    (lab / "images" / "vmlinuz").write_bytes(os.urandom(3000))
    recipe = lab / "r.yaml"
    recipe.write_text(
        "version: 1\nname: lab\n"
        f"ca: {{home: {pki.dir}}}\n"
        f"signer: {{key: boot-signer, passphrase: {{file: {pki.key_pass}}}}}\n"
        f"origin: {{url: 'file://{tmp_path}/srv', public_url: 'https://127.0.0.1:9/',"
        f" ca_file: {pki.ca}}}\n"
        "entries:\n  - name: linux\n    kernel: images/vmlinuz\n")
    allow = ["--allow-outside", str(pki.dir), "--allow-outside", str(pki.secrets),
             "--allow-outside", str(tmp_path)]
    planned = run("release", str(recipe), *allow, "--dry-run", "--json")
    assert keys_of(planned) == table["release"]
    bad = recipe.with_name("bad.yaml")
    bad.write_text(recipe.read_text() + "surprise: 1\n")
    failed = run("release", str(bad), *allow, "--json")
    assert failed.stdout == ""
    assert "bad.yaml:" in str(json_error(failed, 3)["message"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the audit needs root (raw sockets)")
def test_audit_json() -> None:
    table = documented()
    report = run("audit", "-i", "lo", "--passive", "--window", "0.2", "--json")
    assert keys_of(report) == table["audit"]
    assert set(json.loads(report.stdout)["summary"]) == {
        "findings", "by_severity", "responders", "fail_on", "failed", "complete", "limits"}
    unknown = run("audit", "-i", "tb-no-such-if0", "--json")
    json_error(unknown, 3)
    assert unknown.stdout == ""
