"""Every exit code the README's Conventions (and each command's section) documents is
the one the tool returns in the documented case: one table of cases, run as a user would.

0 ok · 1 operational (I/O, origin) · 2 usage · 3 invalid configuration or input ·
4 verification failed · 5 audit findings at or above --fail-on · 70 a bug (in
tests/test_cli_errors.py) · 130/143/129 signals (tests/release/test_interrupt.py,
tests/ipxe/test_hardening.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.publish.conftest import Pki
from trustboot.cli.main import cli
from trustboot.cms.verify import MAX_SIGNATURE_SIZE


@dataclass
class Scene:
    pki: Pki
    dir: Path

    def file(self, name: str, data: bytes = b"payload" * 100) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def signed(self, name: str) -> Path:
        path = self.file(name)
        self.pki.sign([path], self.dir)
        return path

    def key(self) -> list[str]:
        return ["--key", "boot-signer", "--pki", str(self.pki.dir), "--passphrase-file",
                str(self.pki.key_pass)]

    def recipe(self, extra: str = "") -> Path:
        (self.dir / "images").mkdir(exist_ok=True)
        (self.dir / "images" / "vmlinuz").write_bytes(b"kernel" * 100)
        path = self.dir / "r.yaml"
        path.write_text(
            "version: 1\nname: lab\n"
            f"ca: {{home: {self.pki.dir}}}\n"
            f"signer: {{key: boot-signer, passphrase: {{file: {self.pki.key_pass}}}}}\n"
            f"origin: {{url: 'file://{self.dir}/srv', public_url: 'https://127.0.0.1:9/',"
            f" ca_file: {self.pki.ca}}}\n"
            "entries:\n  - name: linux\n    kernel: images/vmlinuz\n" + extra)
        return path

    def allow(self) -> list[str]:
        return ["--allow-outside", str(self.pki.dir), "--allow-outside", str(self.pki.secrets)]

    def pki_copy(self) -> Path:
        copy = self.dir / "pki-copy"
        shutil.copytree(self.pki.dir, copy)
        return copy


def _fifo(s: Scene) -> list[str]:
    image = s.file("fifo-img")
    os.mkfifo(s.dir / "fifo-img.sig")
    return ["verify", str(image), "--pki", str(s.pki.dir)]


def _tampered(s: Scene) -> list[str]:
    image = s.signed("tampered")
    image.write_bytes(b"changed" * 100)
    return ["verify", str(image), "--pki", str(s.pki.dir)]


def _wrong_passphrase(s: Scene) -> list[str]:
    wrong = s.file("wrong.pass", b"not the passphrase\n")
    wrong.chmod(0o600)
    return ["sign", str(s.file("img")), "--key", "boot-signer", "--pki", str(s.pki.dir),
            "--passphrase-file", str(wrong)]


def _revoked(s: Scene) -> list[str]:
    pki = s.pki_copy()
    ca_pass = str(s.pki.secrets / "ca.pass")
    result = CliRunner().invoke(cli, ["ca", "revoke", "boot-signer", "--pki", str(pki),
                                      "--passphrase-file", ca_pass])
    assert result.exit_code == 0, result.output
    return ["sign", str(s.file("img")), "--key", "boot-signer", "--pki", str(pki),
            "--passphrase-file", str(s.pki.key_pass)]


def _tampered_cert(s: Scene) -> list[str]:
    pki = s.pki_copy()
    other = (pki / "issued" / "origin.crt").read_bytes()
    (pki / "issued" / "boot-signer.crt").write_bytes(other)
    return ["ca", "check", "--pki", str(pki)]


def _edited_log(s: Scene) -> list[str]:
    pki = s.pki_copy()
    log = pki / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"codesign"', '"server"', 1)
    assert lines[1] != log.read_text().splitlines(keepends=True)[1]
    log.write_text("".join(lines))
    return ["ca", "check", "--pki", str(pki)]


def _recipe_missing_kernel(s: Scene) -> list[str]:
    recipe = s.recipe()
    (s.dir / "images" / "vmlinuz").unlink()
    return ["release", str(recipe), *s.allow()]


def _publish(s: Scene, origin: str, *extra: str, signer: str = "boot-signer") -> list[str]:
    release = s.dir / "release"
    if not release.exists():
        release.mkdir()
        (release / "boot.ipxe").write_bytes(b"#!ipxe\necho hi\n")
        s.pki.sign([release / "boot.ipxe"], release)
    return ["publish", str(release), origin, "--release-id", "r1", "--pki", str(s.pki.dir),
            "--signer", signer, *extra]


def _oversized_served_sig(s: Scene) -> list[str]:
    result = CliRunner().invoke(cli, _publish(s, f"file://{s.dir}/srv"))
    assert result.exit_code == 0, result.output
    with open(s.dir / "srv/releases/r1/boot.ipxe.sig", "ab") as sig:
        sig.truncate(MAX_SIGNATURE_SIZE + 1)
    return ["publish", "rollback", f"file://{s.dir}/srv", "r1", "--pki", str(s.pki.dir)]


Case = tuple[str, int, Callable[[Scene], list[str]]]
CASES: list[Case] = [
    # 0: success
    ("verify: iPXE would accept it", 0,
     lambda s: ["verify", str(s.signed("good")), "--pki", str(s.pki.dir)]),
    ("sign: signed", 0, lambda s: ["sign", str(s.file("img")), *s.key()]),
    ("release --dry-run: the plan", 0,
     lambda s: ["release", str(s.recipe()), *s.allow(), "--dry-run"]),
    # 1: operational failure (I/O, network, origin)
    ("verify: FILE missing", 1, lambda s: ["verify", str(s.dir / "nope"), "--pki",
                                           str(s.pki.dir)]),
    ("verify: its .sig missing", 1, lambda s: ["verify", str(s.file("unsigned")), "--pki",
                                                str(s.pki.dir)]),
    ("verify: its .sig a FIFO", 1, _fifo),
    ("sign: a FILE missing", 1, lambda s: ["sign", str(s.dir / "nope"), *s.key()]),
    ("sign: a FILE is a directory", 1, lambda s: ["sign", str(s.dir), *s.key()]),
    # the operand is the input asked for, as sign's and verify's FILE (a directory a
    # recipe names is configuration: exit 3, below)
    ("publish: the release directory does not exist", 1,
     lambda s: ["publish", str(s.dir / "nope"), f"file://{s.dir}/srv", "--release-id", "r1",
                "--pki", str(s.pki.dir)]),
    ("publish: the release directory is a file", 1,
     lambda s: ["publish", str(s.file("img")), f"file://{s.dir}/srv", "--release-id", "r1",
                "--pki", str(s.pki.dir)]),
    ("publish: origin unreachable", 1,
     lambda s: _publish(s, "https://127.0.0.1:9/", "--retries", "0", "--timeout", "2")),
    # 2: usage (click's own)
    ("usage: unknown option", 2, lambda s: ["verify", "--no-such-option"]),
    ("usage: missing --key", 2, lambda s: ["sign", str(s.file("img"))]),
    # 3: invalid configuration or input
    ("verify: --at is not a time", 3,
     lambda s: ["verify", str(s.signed("at")), "--pki", str(s.pki.dir), "--at", "soon"]),
    ("verify: a --trust file that is no certificate", 3,
     lambda s: ["verify", str(s.signed("tr")), "--trust", str(s.file("junk.crt"))]),
    ("sign: wrong passphrase", 3, _wrong_passphrase),
    ("sign: --expiry-warning-days out of range", 3,
     lambda s: ["sign", str(s.file("img")), *s.key(), "--expiry-warning-days", "-1"]),
    ("sign: --files-from not a list file", 3,
     lambda s: ["sign", *s.key(), "--files-from", str(s.dir)]),
    ("release: unknown recipe key", 3,
     lambda s: ["release", str(s.recipe("surprise: 1\n")), *s.allow()]),
    ("release: a kernel the recipe names does not exist", 3, _recipe_missing_kernel),
    ("release: the recipe is a directory", 3, lambda s: ["release", str(s.dir)]),
    ("recipe check: the recipe is a directory", 3, lambda s: ["recipe", "check", str(s.dir)]),
    ("publish: bad release id", 3,
     lambda s: _publish(s, f"file://{s.dir}/srv", "--release-id", "../x")),
    ("ca check: a certificate not the one the index recorded", 3, _tampered_cert),
    # 4: verification failed
    ("verify: tampered image", 4, _tampered),
    ("verify: --signer names someone else", 4,
     lambda s: ["verify", str(s.signed("sn")), "--pki", str(s.pki.dir), "--signer", "eve"]),
    ("sign: revoked signer", 4, _revoked),
    ("release: signer expires before min_signer_lifetime", 4,
     lambda s: ["release", str(s.recipe("release: {min_signer_lifetime: 5000d}\n")),
                *s.allow()]),
    ("publish: local signature by another signer than --signer", 4,
     lambda s: _publish(s, f"file://{s.dir}/srv", signer="other-signer")),
    ("publish rollback: the origin serves a .sig over iPXE's cap", 4, _oversized_served_sig),
    ("ca check: an edited operation log line", 4, _edited_log),
]


@pytest.mark.parametrize(("case", "code", "argv"), CASES, ids=[c[0] for c in CASES])
def test_documented_exit_code(case: str, code: int, argv: Callable[[Scene], list[str]],
                              pki: Pki, tmp_path: Path) -> None:
    scene = Scene(pki, tmp_path)
    args = argv(scene)
    for extra in ([], ["--json"]):
        if code == 2 and extra:
            continue  # usage errors under --json: tests/test_cli_errors.py
        result = CliRunner().invoke(cli, [*args, *extra])
        assert result.exit_code == code, (case, extra, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            case, result.exception)
        if code not in (0, 2):
            assert "Traceback" not in result.output and "hint" in result.stderr, case


@pytest.mark.skipif(os.geteuid() != 0, reason="the audit needs root (raw sockets)")
def test_audit_exit_5_at_fail_on_and_0_below(tmp_path: Path) -> None:
    """A passive look at lo finds no responders, an info finding: exit 5 with --fail-on
    info, 0 at the default (high) and with --fail-on none."""
    base = ["audit", "-i", "lo", "--passive", "--window", "0.2"]
    assert CliRunner().invoke(cli, [*base, "--fail-on", "info"]).exit_code == 5
    assert CliRunner().invoke(cli, base).exit_code == 0
    assert CliRunner().invoke(cli, [*base, "--fail-on", "none"]).exit_code == 0
    bad = tmp_path / "policy.yaml"
    bad.write_text("authorised_servers: []\n")  # a typo is refused, never ignored
    assert CliRunner().invoke(cli, [*base, "--policy", str(bad)]).exit_code == 3
