"""Keys trustboot generates in a token, and their removal after a failed run: only the
pairs that run made, named by the CKA_ID it chose, never everything under a label."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.keys.softhsm import PIN, Token, token_objects
from trustboot.errors import ConfigError
from trustboot.keys.pkcs11 import destroy_generated, generate_key_pair, parse_uri
from trustboot.secrets import constant


def _another_pair(token: Token, label: str, key_id: bytes) -> None:
    """A pair made in another session under the same label (a concurrent run on another
    CA home that passed its label check at the same moment)."""
    import pkcs11

    lib = pkcs11.lib(str(token.module))
    try:
        with lib.get_token(token_label=token.label).open(rw=True, user_pin=PIN) as s:
            s.generate_keypair(pkcs11.KeyType.RSA, 2048, id=key_id, label=label, store=True)
    finally:
        lib.finalize()


def test_destroy_removes_only_the_pairs_this_run_made(token: Token) -> None:
    where = f"pkcs11:token={token.label}"
    label = "trustboot-sb-PK"
    ours = generate_key_pair(where, token.module, constant(PIN.encode()), label=label,
                             kind="rsa", size=2048)
    _another_pair(token, label, b"theirs")
    ours_id = parse_uri(ours).id
    assert ours_id and {i for _, i in token_objects(token)} == {ours_id, b"theirs"}
    destroy_generated(where, token.module, constant(PIN.encode()), [ours])
    assert token_objects(token) == {(label, b"theirs")}  # their public and private key, intact


def test_a_taken_label_is_refused_before_anything_is_generated(token: Token) -> None:
    _another_pair(token, "trustboot-sb-KEK", b"theirs")
    with pytest.raises(ConfigError, match="already holds objects labelled"):
        generate_key_pair(f"pkcs11:token={token.label}", token.module,
                          constant(PIN.encode()), label="trustboot-sb-KEK", kind="rsa",
                          size=2048)
    assert token_objects(token) == {("trustboot-sb-KEK", b"theirs")}


def test_a_label_taken_during_generation_is_refused_and_only_ours_removed(
        token: Token, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run (another process, another CA home) passes the same label check at the
    same moment and generates first: this run removes its own pair, by its CKA_ID, and is
    refused like one that saw the label taken; theirs stays."""
    label = "trustboot-root-ca"
    real_urandom = os.urandom
    raced: list[bool] = []
    racer = (
        "import pkcs11, sys\n"
        "lib = pkcs11.lib(sys.argv[1])\n"
        "with lib.get_token(token_label=sys.argv[2]).open(rw=True, user_pin=sys.argv[3]) as s:\n"
        "    s.generate_keypair(pkcs11.KeyType.RSA, 2048, id=b'theirs', label=sys.argv[4],\n"
        "                       store=True)\n")

    def racing(n: int) -> bytes:
        # drawn for our CKA_ID: after the label check, before the generation
        if not raced:
            raced.append(True)
            subprocess.run([sys.executable, "-c", racer, str(token.module), token.label, PIN,
                            label], check=True, env=dict(os.environ))
        return real_urandom(n)
    monkeypatch.setattr(os, "urandom", racing)
    with pytest.raises(ConfigError, match="another run at the same moment"):
        generate_key_pair(f"pkcs11:token={token.label}", token.module,
                          constant(PIN.encode()), label=label, kind="rsa", size=2048)
    monkeypatch.undo()
    assert raced
    assert token_objects(token) == {(label, b"theirs")}  # theirs intact, ours gone


def test_generating_asks_for_the_pin_once(token: Token) -> None:
    """The label check after generating opens a session of its own, with the PIN given."""
    asked: list[str] = []

    def pin(what: str) -> bytes:
        asked.append(what)
        return PIN.encode()
    ref = generate_key_pair(f"pkcs11:token={token.label}", token.module, pin,
                            label="trustboot-issuing-ca", kind="ec", size=256)
    assert len(asked) == 1 and parse_uri(ref).id
    assert {label for label, _ in token_objects(token)} == {"trustboot-issuing-ca"}
