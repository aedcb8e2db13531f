"""Where passphrases come from.

The library never prompts: it takes a ``PassphraseSource`` callback. The CLI builds one
from a hidden prompt, ``--passphrase-file`` or ``--passphrase-env``. Passphrases never come
from argv and are never printed or logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from trustboot.errors import ConfigError
from trustboot.fsutil import check_parents, read_capped

# Called with a short description of what the passphrase unlocks ("CA key", ...).
PassphraseSource = Callable[[str], bytes]


# A passphrase is one line; a file larger than this is the wrong file (or /dev/zero).
MAX_PASSPHRASE_FILE = 64 * 1024


def from_file(path: Path, what: str = "passphrase file") -> PassphraseSource:
    """The first line of ``path``: a private regular file (closed to group and others, as
    an origin's credentials file), read when asked. A link to one is followed: the mode
    judged is the file's opened, and secret mounts (Kubernetes, Docker) are links. Its
    lookup must be one no other user can change (:func:`check_parents`): not through
    another user's link, nor a directory another user owns or can write, where the name
    could be pointed at any file we can read (a key file's first line becoming the
    passphrase of a new key). Root's directories (/run/secrets) are fine."""

    def source(_what: str) -> bytes:
        check_parents(Path(path), what)
        data = read_capped(Path(path), MAX_PASSPHRASE_FILE, what, private=True)
        value = data.splitlines()[0] if data else b""
        if not value:
            raise ConfigError(f"{what} {path} is empty",
                              hint="its first line is the secret: write it there")
        refuse_nul(value, f"the first line of {what} {path}")
        return value

    return source


def refuse_nul(value: bytes, where: str) -> None:
    """A NUL byte is never part of a PIN or passphrase one can type: in a file it is a C
    string's terminator or binary junk. A token would get it as a PIN byte (and count a
    failed login), a key would be encrypted under a passphrase no prompt can give again;
    refused instead, without saying where in the secret it is."""
    if b"\0" in value:
        raise ConfigError(f"{where} holds a NUL byte; a PIN or passphrase cannot contain one",
                          hint="the secret is one line of text: rewrite it without the NUL "
                               "byte (a C program's string terminator?)")


def from_env(name: str) -> PassphraseSource:
    def source(_what: str) -> bytes:
        # environb: the bytes as given, whatever the locale (no decode error that would
        # point into the secret).
        value = os.environb.get(os.fsencode(name))
        if not value:
            raise ConfigError(
                f"environment variable {name} is not set or empty",
                hint=f"export {name} with the passphrase, or use --passphrase-file",
            )
        return value

    return source


def constant(value: bytes) -> PassphraseSource:
    """For library users and tests that already hold the passphrase."""

    def source(_what: str) -> bytes:
        return value

    return source


def asked_once(source: PassphraseSource) -> PassphraseSource:
    """``source`` asked at most once, its answer reused (one PIN for every key of a token,
    one passphrase for several keys of a set)."""
    memo: list[bytes] = []

    def remembered(what: str) -> bytes:
        if not memo:
            memo.append(source(what))
        return memo[0]

    return remembered
