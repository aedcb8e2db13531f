"""Encrypted private key files: PKCS#8, PBES2 with scrypt and AES-256-CBC.

cryptography's BestAvailableEncryption writes PBKDF2 with a low iteration count; scrypt
(N=2^14, r=8, p=1, OpenSSL's own `pkcs8 -scrypt` parameters) is memory-hard and still
loads in OpenSSL and cryptography, so users keep their usual tools (`openssl pkey`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from asn1crypto import core
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trustboot.errors import ConfigError
from trustboot.fsutil import read_private_file, write_private_file
from trustboot.secrets import PassphraseSource

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSPHRASE_LEN = 8
# An RSA-16384 PKCS#8 PEM is under 13 KiB; anything near this cap is not a key.
MAX_KEY_FILE_SIZE = 1 << 20

_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def _seq(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return b"\x30" + _der_len(len(body)) + body


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encrypt_pkcs8(key: PrivateKey, passphrase: bytes) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` with PBES2(scrypt, aes256-cbc)."""
    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(16)
    iv = os.urandom(16)
    kek = hashlib.scrypt(
        passphrase, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
    )
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    # asn1crypto has no scrypt KDF type, so the few DER nodes are assembled from its
    # primitive types.
    scrypt_params = _seq(
        core.OctetString(salt).dump(),
        core.Integer(SCRYPT_N).dump(),
        core.Integer(SCRYPT_R).dump(),
        core.Integer(SCRYPT_P).dump(),
    )
    kdf = _seq(core.ObjectIdentifier(_OID_SCRYPT).dump(), scrypt_params)
    enc_scheme = _seq(core.ObjectIdentifier(_OID_AES256_CBC).dump(), core.OctetString(iv).dump())
    alg = _seq(core.ObjectIdentifier(_OID_PBES2).dump(), _seq(kdf, enc_scheme))
    der = _seq(alg, core.OctetString(ciphertext).dump())
    from asn1crypto import pem

    armored: bytes = pem.armor("ENCRYPTED PRIVATE KEY", der)
    return armored


def write_key(path: Path, key: PrivateKey, passphrase: bytes) -> None:
    """Create ``path`` (0600, O_EXCL, in a 0700 directory) holding the encrypted key."""
    check_passphrase(passphrase, f"the passphrase for {path.name}")
    write_private_file(path, encrypt_pkcs8(key, passphrase))


def check_passphrase(passphrase: bytes, what: str) -> None:
    """The one strength rule for every passphrase that protects a new key."""
    if len(passphrase) < MIN_PASSPHRASE_LEN:
        raise ConfigError(
            f"{what} is shorter than {MIN_PASSPHRASE_LEN} characters",
            hint="choose a longer passphrase",
        )


def load_key(path: Path, passphrases: PassphraseSource, what: str, *,
             checked_by_caller: bool = False) -> PrivateKey:
    """Load an encrypted key file, refusing loose permissions and unencrypted keys.

    ``checked_by_caller=True`` skips OpenSSL's RSA consistency check (primality of p and
    q, CRT values: 50-100 ms for RSA-2048, as long as the KDF), for a caller that compares
    the key with its certificate and verifies every signature it makes with the
    certificate's public key before using it (keys.signer.KeySigner); OpenSSL also checks
    each CRT signature itself. Everything else (the CA) keeps the full check.
    """
    path = Path(path)
    data = read_private_file(path, "key file", limit=MAX_KEY_FILE_SIZE)
    if b"ENCRYPTED PRIVATE KEY" not in data and b"Proc-Type: 4,ENCRYPTED" not in data:
        raise ConfigError(
            f"key file {path} is not encrypted",
            hint=f"encrypt it: openssl pkcs8 -topk8 -scrypt -in {path} -out {path}.enc",
        )
    passphrase = passphrases(what)
    try:
        key = serialization.load_pem_private_key(
            data, passphrase, unsafe_skip_rsa_key_validation=checked_by_caller)
    except ValueError:
        raise ConfigError(
            f"wrong passphrase for {what} ({path}), or the key file is damaged",
            hint="check the passphrase source (--passphrase-file / --passphrase-env)",
        ) from None
    except TypeError:
        raise ConfigError(f"key file {path} could not be decrypted") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"key file {path} holds a {type(key).__name__}; only RSA and ECDSA")
    return key
