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

# Called with a short description of what the passphrase unlocks ("CA key", ...).
PassphraseSource = Callable[[str], bytes]


def from_file(path: Path) -> PassphraseSource:
    def source(_what: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read passphrase file {path}: {exc.strerror}",
                hint="pass a readable file with --passphrase-file",
            ) from None
        value = data.splitlines()[0] if data else b""
        if not value:
            raise ConfigError(f"passphrase file {path} is empty")
        return value

    return source


def from_env(name: str) -> PassphraseSource:
    def source(_what: str) -> bytes:
        value = os.environ.get(name)
        if not value:
            raise ConfigError(
                f"environment variable {name} is not set or empty",
                hint=f"export {name} with the passphrase, or use --passphrase-file",
            )
        return value.encode()

    return source


def constant(value: bytes) -> PassphraseSource:
    """For library users and tests that already hold the passphrase."""

    def source(_what: str) -> bytes:
        return value

    return source
