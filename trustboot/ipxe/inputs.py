"""Collecting build inputs from a pki/ directory and loose files.

The pki layout (see trustboot.ca): ``ca.crt`` (root), ``issuing-ca.crt`` (intermediate),
``issued/NAME.crt`` and ``private/NAME.key`` (encrypted PKCS#8). The root becomes TRUST=;
root and intermediate become CERT= so a signature that lacks a chain certificate still
verifies without any network fetch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trustboot.errors import ConfigError
from trustboot.ipxe.config import (
    Certificate,
    ClientIdentity,
    client_identity,
    load_certificates,
    load_single_certificate,
)
from trustboot.keys.keyfile import load_key
from trustboot.secrets import PassphraseSource


@dataclass(frozen=True)
class TrustInputs:
    trust: tuple[Certificate, ...]
    certs: tuple[Certificate, ...]


def collect_trust(
    pki: Path | None, trust_files: Sequence[Path], cert_files: Sequence[Path]
) -> TrustInputs:
    """Roots for TRUST= (pki root first, then each ``--trust``) and chain certs for CERT=."""
    trust: list[Certificate] = []
    certs: list[Certificate] = []
    if pki is not None:
        root = pki / "ca.crt"
        if not root.is_file():
            raise ConfigError(
                f"{pki} holds no CA ({root} is missing)",
                hint="create one with `trustboot ca init --pki DIR`, or pass the root with "
                "--trust FILE",
            )
        trust.append(load_single_certificate(root))
        issuing = pki / "issuing-ca.crt"
        if issuing.is_file():
            certs.extend(load_certificates(issuing))
    for path in trust_files:
        cert = load_single_certificate(path)
        if cert.fingerprint not in {c.fingerprint for c in trust}:
            trust.append(cert)
    for path in cert_files:
        certs.extend(load_certificates(path))
    if not trust:
        raise ConfigError(
            "no trust anchor given",
            hint="pass --pki DIR (uses DIR/ca.crt) or --trust ROOT.crt",
        )
    return TrustInputs(tuple(trust), tuple(certs))


def load_client_identity(
    pki: Path | None, name: str, passphrases: PassphraseSource
) -> ClientIdentity:
    """``issued/NAME.crt`` and ``private/NAME.key`` from the pki, as PRIVKEY= needs them."""
    if pki is None:
        raise ConfigError("--client-cert needs --pki DIR", hint="pass --pki")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"client certificate name {name!r} is not a plain name")
    cert_path = pki / "issued" / f"{name}.crt"
    key_path = pki / "private" / f"{name}.key"
    if not cert_path.is_file():
        raise ConfigError(
            f"no client certificate {cert_path}",
            hint="issue one with `trustboot ca issue client NAME`",
        )
    cert = load_single_certificate(cert_path)
    if not key_path.is_file():
        raise ConfigError(f"no key {key_path} for client certificate {name}")
    key = load_key(key_path, passphrases, f"the client key {name}")
    return client_identity(cert, key)
