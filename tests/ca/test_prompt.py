"""The hidden passphrase prompt on a real terminal (pty): confirmed at init, never echoed."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from trustboot.ca.store import CertificateAuthority
from trustboot.keys import keyfile
from trustboot.secrets import constant

from .conftest import spki, trustboot_cmd

pexpect = pytest.importorskip("pexpect", reason="pexpect (test extra) drives the pty prompt")


def _as_a_shell_starts_it() -> None:
    # A shell's foreground job gets Ctrl-C. pytest run in the background (`cmd &`,
    # nohup) ignores SIGINT, and an ignored signal stays ignored across exec: the child
    # would then never see the Ctrl-C these tests type (it hung, 60 s, in such runs).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(*args: str) -> Any:
    cmd = trustboot_cmd()
    return pexpect.spawn(cmd[0], [*cmd[1:], *args], encoding="utf-8", timeout=60,
                         preexec_fn=_as_a_shell_starts_it)


def init_with(pki: Path, first: str, second: str) -> Any:
    """Start `ca init` on a pty and answer its passphrase prompt and confirmation."""
    child = spawn("ca", "init", "--pki", str(pki), "--key-type", "ec-p256")
    child.expect("Passphrase for the new CA keys: ")
    child.sendline(first)
    child.expect("Repeat for confirmation: ")
    child.sendline(second)
    return child


def test_init_prompts_twice_and_never_echoes(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    child = init_with(pki, "typed secret 123", "typed secret 123")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "typed secret" not in (child.before or "")
    ca = CertificateAuthority.open(pki)
    key = keyfile.load_key(pki / "private" / "issuing-ca.key", constant(b"typed secret 123"),
                           "test")
    assert spki(key) == spki(ca.issuing_cert)


def test_init_confirmation_mismatch_asks_again(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    child = init_with(pki, "first secret 123", "other secret 456")
    child.expect("do not match")
    child.expect("Passphrase for the new CA keys: ")
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    assert not (pki / "index.json").exists()


def test_short_passphrase_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    child = init_with(pki, "short", "short")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3
    assert "shorter than 8" in (child.before or "")
    assert not (pki / "index.json").exists()
