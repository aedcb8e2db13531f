"""Key references: which key signs, named the way securesystemslib names keys.

* ``NAME`` or ``ca:NAME``: the code-signing certificate NAME issued by the CA in the pki dir
  (its key in private/NAME.key, its chain from chain.pem);
* ``file:PATH``: an encrypted PKCS#8 key file; the certificate and chain come separately;
* ``pkcs11:...`` (RFC 7512): a key in a token or HSM (see trustboot.keys.pkcs11).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trustboot.errors import ConfigError

Scheme = Literal["ca", "file", "pkcs11"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# RFC 7512 lets a pkcs11: URI carry the token PIN itself: never show it. Any letter may be
# percent-encoded (pin%2Dvalue=), in either case, and whitespace may sit anywhere in the
# name; the PIN may hold '&' or ';', so no character ends it: everything from the name to
# the end of the text is masked.
_GAP = r"(?:\s|%(?:09|0a|0b|0c|0d|20))*"
_PIN_VALUE = re.compile(
    _GAP.join("(?:" + "|".join(sorted({re.escape(c), *(f"%{ord(v):02x}" for v in
                                                        {c, c.upper()})})) + ")"
              for c in "pin-value") + r"[\s\S]*", re.IGNORECASE)
# where an attribute name starts or ends, once percent-decoded and without whitespace
_PIN_ATTRIBUTE = re.compile(r"(?:^|[:;?&])pin-value(?:=|[;?&]|$)")


@dataclass(frozen=True)
class KeyRef:
    scheme: Scheme
    value: str  # CA name, file path, or the whole pkcs11: URI

    @property
    def path(self) -> Path:
        if self.scheme != "file":
            raise ValueError("only file: references have a path")
        return Path(self.value)

    def __str__(self) -> str:
        """For messages and manifests: a PIN inside a pkcs11: URI is masked."""
        if self.scheme == "pkcs11":
            return mask_pin(self.value)
        return f"{self.scheme}:{self.value}"


def mask_pin(text: str) -> str:
    """``text`` with any RFC 7512 ``pin-value=``, and all that follows it, masked: for every
    message showing a ref."""
    return _PIN_VALUE.sub("pin-value=***", text)


def carries_pin(text: str) -> bool:
    """Whether ``text`` holds a ``pin-value`` attribute in any spelling: percent-encoded,
    in any case, with whitespace in or around the name. A URI that does is never shown,
    not even masked: where its attributes end cannot be trusted."""
    compact = re.sub(r"\s+", "", urllib.parse.unquote(text)).lower()
    return _PIN_ATTRIBUTE.search(compact) is not None


def parse_ref(text: str) -> KeyRef:
    """Parse a key reference; ConfigError naming the accepted forms otherwise."""
    raw = text.strip()
    shown = mask_pin(raw)  # a malformed reference may still carry a PIN
    forms = "a CA certificate name (NAME or ca:NAME), file:PATH, or a pkcs11: URI"
    if not raw:
        raise ConfigError("empty key reference", hint=f"pass --key with {forms}")
    scheme, sep, rest = raw.partition(":")
    if sep and scheme.lower() == "file":
        if not rest:
            raise ConfigError(f"key reference {shown!r} has no path", hint="use file:PATH")
        # file:///abs/path and file:rel/path both work.
        path = rest[2:] if rest.startswith("//") else rest
        return KeyRef("file", path)
    if sep and scheme.lower() == "pkcs11":
        return KeyRef("pkcs11", raw)
    if sep and scheme.lower() == "ca":
        name = rest
    elif sep:
        raise ConfigError(f"unknown key reference scheme {mask_pin(scheme)!r} in {shown!r}",
                          hint=f"use {forms}")
    else:
        name = raw
    if not _NAME.match(name):
        raise ConfigError(f"{mask_pin(name)!r} is not a valid certificate name",
                          hint="names are letters, digits, '.', '_' and '-'")
    return KeyRef("ca", name)
