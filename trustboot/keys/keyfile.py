"""Encrypted private key files: PKCS#8, PBES2 with scrypt and AES-256-CBC.

cryptography's BestAvailableEncryption writes PBKDF2 with a low iteration count; scrypt
(N=2^14, r=8, p=1, OpenSSL's own `pkcs8 -scrypt` parameters) is memory-hard and still
loads in OpenSSL and cryptography, so users keep their usual tools (`openssl pkey`).

Reading one, the scrypt KDF (about 50 ms) runs in ``hashlib.scrypt``, which lets other
threads run meanwhile (cryptography's loader holds the GIL throughout): with ``KeyLoad`` a
command unlocks its key while it imports and checks everything else. This module imports
only the standard library at its top for that reason: cryptography (and asn1crypto, for
writing) come in when a key is decrypted or written.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trustboot.errors import ConfigError
from trustboot.fsutil import read_private_file, write_private_file
from trustboot.secrets import PassphraseSource

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from trustboot.keys.algorithms import HashAlgorithm

    PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
# The most memory (128 * r * N bytes) and work (N * r * p: 32 times the default, about
# 1.5 s here) a key file's scrypt parameters may ask for: a file asking more is refused.
SCRYPT_MAXMEM = 64 << 20
SCRYPT_MAX_WORK = 32 * SCRYPT_N * SCRYPT_R * SCRYPT_P
# PBKDF2 iteration counts (and those of the older PBES1 and PKCS#12 schemes) above this are
# refused: 1-2.5 s here, against OWASP's 2023 advice of 600,000 for HMAC-SHA-256 and
# 1,300,000 for HMAC-SHA-1. OpenSSL would run any count, for minutes, before it can tell
# a wrong passphrase.
MAX_KDF_ITERATIONS = 4_000_000
MIN_PASSPHRASE_LEN = 8
# An RSA-16384 PKCS#8 PEM is under 13 KiB; anything near this cap is not a key.
MAX_KEY_FILE_SIZE = 1 << 20

# The PEM label of a PKCS#8 EncryptedPrivateKeyInfo.
_PEM_LABEL = b"ENCRYPTED PRIVATE KEY"
_PEM_BEGIN = b"-----BEGIN " + _PEM_LABEL + b"-----"
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
# PBES1 (PKCS#5 v1.5) and PKCS#12 password-based encryption: parameters (salt, iterations).
_OIDS_SALT_ITERATIONS = (*(f"1.2.840.113549.1.5.{i}" for i in (1, 3, 4, 6, 10, 11)),
                         *(f"1.2.840.113549.1.12.1.{i}" for i in range(1, 7)))
# The ciphers a key file may be encrypted with (in PBES2, with scrypt or PBKDF2): AES-CBC.
_AES_CBC = {"2.16.840.1.101.3.4.1.2": "AES-128-CBC", "2.16.840.1.101.3.4.1.22": "AES-192-CBC",
            _OID_AES256_CBC: "AES-256-CBC"}
# Names of the refused ones, for the message.
_WEAK_CIPHERS = {"1.3.14.3.2.7": "single DES (DES-CBC)", "1.2.840.113549.3.7": "DES-EDE3-CBC",
                 "1.2.840.113549.3.2": "RC2-CBC", "1.2.840.113549.3.4": "RC4"}
_REENCRYPT = ("re-encrypt it with AES: openssl pkcs8 -topk8 -scrypt -in KEY -out NEW.key "
              "(a key in single DES or RC2 needs `-provider legacy -provider default` to be "
              "read)")


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
    from asn1crypto import core
    from cryptography.hazmat.primitives import padding, serialization
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(16)
    iv = os.urandom(16)
    kek = hashlib.scrypt(
        passphrase, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM,
        dklen=32)
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

    armored: bytes = pem.armor(_PEM_LABEL.decode(), der)
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


def _looks_like_der_key(data: bytes) -> bool:
    """Whether ``data`` parses as an unencrypted DER private key (the one refusal that
    then says "not encrypted" rather than "not a key")."""
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        return False
    return True


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
    if _PEM_LABEL not in data and b"Proc-Type: 4,ENCRYPTED" not in data:
        if b"PRIVATE KEY-----" not in data and not _looks_like_der_key(data):
            raise ConfigError(f"key file {path} is not a private key (neither PEM nor DER)",
                              hint="check the path: it names no key file")
        raise ConfigError(
            f"key file {path} is not encrypted",
            hint=f"encrypt it: openssl pkcs8 -topk8 -scrypt -in {path} -out {path}.enc",
        )
    source = f"key file {path}"
    # Costly or weak encryption is refused before the passphrase is asked for (see
    # check_key_encryption).
    params = _scrypt_pbes2(data)
    if params is None:
        check_key_encryption(data, source)
    else:
        _check_scrypt(source, params.n, params.r, params.p)
    passphrase = passphrases(what)
    kek = None
    if params is not None:
        # The KDF first, before cryptography is imported: see the module docstring.
        try:
            kek = hashlib.scrypt(passphrase, salt=params.salt, n=params.n, r=params.r,
                                 p=params.p, maxmem=SCRYPT_MAXMEM, dklen=32)
        except ValueError:  # p * 128 * r bytes beyond maxmem
            raise _scrypt_refused(source, params.n, params.r, params.p) from None
    from cryptography.exceptions import InternalError, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        if params is not None and kek is not None:
            key = _decrypt(params, kek, checked_by_caller)
        else:  # another PBES2 KDF or cipher, or a legacy PEM: OpenSSL's loader
            key = serialization.load_pem_private_key(
                data, passphrase, unsafe_skip_rsa_key_validation=checked_by_caller)
    except ValueError:
        raise ConfigError(
            f"wrong passphrase for {what} ({path}), or the key file is damaged",
            hint="check the passphrase source (--passphrase-file / --passphrase-env)",
        ) from None
    except (TypeError, InternalError, UnsupportedAlgorithm):
        raise ConfigError(f"key file {path} could not be decrypted",
                          hint="re-encrypt it: openssl pkcs8 -topk8 -scrypt") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"key file {path} holds a {type(key).__name__}; only RSA and ECDSA")
    return key


def sign_with_key(key: PrivateKey, digest: bytes, algo: HashAlgorithm) -> bytes:
    """The signature iPXE checks, over a ``digest`` made with ``algo``: PKCS#1 v1.5 (RSA) or
    deterministic ECDSA. Unchecked: KeySigner and cms.forked.SignAhead check each one."""
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), Prehashed(algo.crypto()))
    # RFC 6979: the same digest gives the same signature, so a release re-signed by a
    # re-run has the bytes its manifest on the origin already claims (releases are
    # immutable; a random k made every re-run of a half-published release conflict)
    return key.sign(digest, ec.ECDSA(Prehashed(algo.crypto()), deterministic_signing=True))


def warm_up(key: PrivateKey, algo: HashAlgorithm) -> None:
    """Import here what a first signature with ``key`` imports (ec.ECDSA() imports
    OpenSSL's backend module, ~5-10 ms): once, before a batch forks its signers, instead
    of once in each of them."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    if isinstance(key, ec.EllipticCurvePrivateKey):
        ec.ECDSA(Prehashed(algo.crypto()), deterministic_signing=True)


class KeyLoad:
    """``load_key`` running in a thread from now on; ``result()`` waits for it and returns
    the key, or raises what load_key raised (so an error surfaces where the key is used,
    in the same order as without the head start).

    The thread spends most of its time in ``hashlib.scrypt``, which releases the GIL:
    the caller's imports and checks proceed meanwhile. Only for passphrase sources that
    never prompt (a file, an environment variable): a prompt belongs to the main thread.
    The thread is a daemon, so an error that ends the command first does not wait for it;
    start it after any fork the caller makes early (forking with threads running is
    unsafe), and call ``result()`` before forking again.
    """

    def __init__(self, path: Path, passphrases: PassphraseSource, what: str, *,
                 checked_by_caller: bool = False) -> None:
        self.path = Path(path)
        self.passphrases = passphrases
        self.checked_by_caller = checked_by_caller
        self._key: PrivateKey | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(what,), daemon=True,
                                        name="trustboot-unlock")
        self._thread.start()

    def _run(self, what: str) -> None:
        try:
            self._key = load_key(self.path, self.passphrases, what,
                                 checked_by_caller=self.checked_by_caller)
        except BaseException as exc:  # re-raised by result(), in the caller's thread
            self._error = exc

    def running(self) -> bool:
        """Whether the key is still being unlocked."""
        return self._thread.is_alive()

    def wait(self) -> None:
        """Until the thread is gone, whatever its outcome (kept for result())."""
        self._thread.join()

    def loaded(self) -> PrivateKey | None:
        """The key once the thread is gone; None if it failed (result() raises that)."""
        self._thread.join()
        return self._key if self._error is None else None

    def result(self) -> PrivateKey:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._key is not None
        return self._key


def signing_key_what(path: Path) -> str:
    """How a signing key file is named in its passphrase prompt and errors."""
    return f"signing key {Path(path).stem}"


def start_signing_key_load(path: Path, passphrases: PassphraseSource) -> KeyLoad:
    """A signing key file (a ``file:`` reference's) unlocked from now on, as
    keys.signer.PendingSigner would, for ``sign_paths(key_ahead=...)``."""
    return KeyLoad(path, passphrases, signing_key_what(path), checked_by_caller=True)


@dataclass(frozen=True)
class _ScryptParams:
    salt: bytes
    n: int
    r: int
    p: int
    iv: bytes
    ciphertext: bytes = field(repr=False)


def _scrypt_pbes2(pem: bytes) -> _ScryptParams | None:
    """The parameters of a PKCS#8 ``ENCRYPTED PRIVATE KEY`` in PBES2(scrypt, AES-256-CBC)
    (what write_key and `openssl pkcs8 -scrypt` write), read strictly; None for anything
    else (cryptography's loader then decides)."""
    from trustboot.cms._asn1 import decode_pem, oid_bytes

    if not pem.lstrip().startswith(_PEM_BEGIN):
        return None
    try:
        der = decode_pem(pem)
        if der is None:
            return None
        oid, params, ciphertext = _encrypted_key(der)
        if oid != oid_bytes(_OID_PBES2):
            return None
        kdf_oid, kdf_params, scheme = _pbes2(params)
        cipher_oid, iv = _fields(scheme, 0x06, 0x04)
        if (kdf_oid != oid_bytes(_OID_SCRYPT) or cipher_oid != oid_bytes(_OID_AES256_CBC)
                or len(iv) != 16):
            return None
        salt, numbers, rest = _salt_and_uints(kdf_params, 4)
        if rest:
            return None
    except ValueError:  # FramingError included: not PEM or DER as expected
        return None
    if len(numbers) == 4 and numbers[3] == 32:  # the optional keyLength, AES-256's
        numbers.pop()
    if len(numbers) != 3:
        return None
    n, r, p = numbers
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not ciphertext or len(ciphertext) % 16:
        return None
    return _ScryptParams(salt, n, r, p, iv, ciphertext)


def check_key_encryption(data: bytes, source: str) -> None:
    """Refuse the encrypted keys in ``data`` (PEM, possibly among other blocks, as in a TLS
    client's file) that trustboot does not accept, before any passphrase is asked for:

    * a KDF that costs more than trustboot spends on a key: scrypt beyond SCRYPT_MAXMEM or
      SCRYPT_MAX_WORK, PBKDF2 (or PBES1, PKCS#12 PBE) beyond MAX_KDF_ITERATIONS. OpenSSL
      runs any of them, for minutes, before it can tell a wrong passphrase;
    * encryption as weak as none: anything but PBES2 (scrypt or PBKDF2) with AES-CBC, such
      as 40-bit RC2 or single DES (PBES1, PKCS#12 PBE, PBES2 with DES); a legacy PEM key
      (Proc-Type/DEK-Info) in anything but AES. An unencrypted key is refused, so these
      are too.

    ConfigError naming ``source`` (e.g. "key file PATH")."""
    from trustboot.cms._asn1 import decode_pem

    for cipher in re.findall(rb"^DEK-Info:[ \t]*([^,\s]*)", data, re.MULTILINE):
        if not cipher.upper().startswith(b"AES-"):
            raise _weak(source, cipher.decode("ascii", "replace") or "an unnamed cipher")
    start = data.find(_PEM_BEGIN)
    while start >= 0:
        try:
            der = decode_pem(data[start:])
        except ValueError:  # FramingError included
            der = None
        if der:
            _check_kdf_der(der, source)
        start = data.find(_PEM_BEGIN, start + len(_PEM_BEGIN))


def _weak(source: str, cipher: str) -> ConfigError:
    return ConfigError(f"{source} is encrypted with {cipher}; trustboot accepts AES only "
                       "(PBES2 with scrypt or PBKDF2)", hint=_REENCRYPT)


def _check_kdf_der(der: bytes, source: str) -> None:
    from trustboot.cms._asn1 import oid_bytes

    aes = {oid_bytes(o) for o in _AES_CBC}
    name = ""
    try:
        oid, params, _ciphertext = _encrypted_key(der)
        if oid == oid_bytes(_OID_PBES2):
            kdf_oid, kdf_params, scheme = _pbes2(params)
            cipher_oid, _iv = _der(scheme, 0x06)
            if cipher_oid not in aes:
                names = {oid_bytes(o): n for o, n in _WEAK_CIPHERS.items()}
                raise _weak(source, names.get(cipher_oid, "a cipher that is not AES"))
            if kdf_oid == oid_bytes(_OID_SCRYPT):
                _salt, numbers, _rest = _salt_and_uints(kdf_params, 3)
                if len(numbers) == 3:
                    _check_scrypt(source, *numbers)
                return
            if kdf_oid != oid_bytes(_OID_PBKDF2):
                raise _weak(source, "a key derivation that is neither scrypt nor PBKDF2")
            name = "PBKDF2"
        elif oid in {oid_bytes(o) for o in _OIDS_SALT_ITERATIONS}:
            kdf_params = params
            name = "its password-based encryption"
        else:
            raise _weak(source, "a scheme that is not PBES2")
        _salt, numbers, _rest = _salt_and_uints(kdf_params, 1)
    except ValueError:  # not as expected: the loader decides (and fails fast)
        if name and name != "PBKDF2":  # the scheme's OID alone says PBES1/PKCS#12
            raise _weak(source, "PBES1/PKCS#12 password-based encryption (DES, RC2, RC4 "
                        "or 3DES)") from None
        return
    if numbers and numbers[0] > MAX_KDF_ITERATIONS:
        raise ConfigError(
            f"{source} asks {name} for {numbers[0]} iterations, more than trustboot spends "
            f"on a key (at most {MAX_KDF_ITERATIONS})",
            hint="re-encrypt the key with the default parameters: openssl pkcs8 -topk8 "
                 "-scrypt")
    if name != "PBKDF2":  # PBES1 or PKCS#12 PBE: DES, RC2, RC4 or 3DES with an old KDF
        raise _weak(source, "PBES1/PKCS#12 password-based encryption (DES, RC2, RC4 or "
                    "3DES)")


def _check_scrypt(source: str, n: int, r: int, p: int) -> None:
    if 128 * r * n > SCRYPT_MAXMEM or n * r * p > SCRYPT_MAX_WORK:
        raise _scrypt_refused(source, n, r, p)


def _scrypt_refused(source: str, n: int, r: int, p: int) -> ConfigError:
    # OpenSSL would spend minutes on it (or fail, with an "internal error")
    return ConfigError(
        f"{source} asks scrypt for more than trustboot spends on a key (N={n}, r={r}, "
        f"p={p}; at most {SCRYPT_MAXMEM >> 20} MiB and "
        f"{SCRYPT_MAX_WORK // (SCRYPT_N * SCRYPT_R * SCRYPT_P)} times the default work)",
        hint="encrypt the key with the default parameters: openssl pkcs8 -topk8 -scrypt")


def _encrypted_key(der: bytes) -> tuple[bytes, bytes, bytes]:
    """(algorithm OID, the contents of its parameters SEQUENCE, ciphertext) of a PKCS#8
    EncryptedPrivateKeyInfo; ValueError if it is not one."""
    [info] = _fields(der, 0x30)
    alg, ciphertext = _fields(info, 0x30, 0x04)
    oid, params = _fields(alg, 0x06, 0x30)
    return oid, params, ciphertext


def _pbes2(params: bytes) -> tuple[bytes, bytes, bytes]:
    """(KDF OID, the contents of the KDF's parameters, the encryption scheme's contents)
    of PBES2-params."""
    kdf, scheme = _fields(params, 0x30, 0x30)
    kdf_oid, kdf_params = _fields(kdf, 0x06, 0x30)
    return kdf_oid, kdf_params, scheme


def _salt_and_uints(kdf_params: bytes, most: int) -> tuple[bytes, list[int], bytes]:
    """A KDF's salt (OCTET STRING), the up to ``most`` INTEGERs after it (scrypt: N, r, p
    and keyLength; PBKDF2 and the older schemes: the iteration count first), and what
    follows them."""
    salt, rest = _der(kdf_params, 0x04)
    numbers: list[int] = []
    while rest[:1] == b"\x02" and len(numbers) < most:
        value, rest = _der(rest, 0x02)
        numbers.append(_uint(value))
    return salt, numbers, rest


def _der(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """(contents, what follows) of the DER object of type ``tag`` at the start of
    ``data``; ValueError unless it is exactly that, with a minimal definite length."""
    if len(data) < 2 or data[0] != tag:
        raise ValueError("unexpected DER")
    length, pos = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count or data[2] == 0:
            raise ValueError("bad DER length")
        length, pos = int.from_bytes(data[2:2 + count], "big"), 2 + count
        if length < 0x80:
            raise ValueError("non-minimal DER length")
    if len(data) < pos + length:
        raise ValueError("truncated DER")
    return data[pos:pos + length], data[pos + length:]


def _fields(data: bytes, *tags: int) -> list[bytes]:
    """The contents of exactly these DER objects, in this order, and nothing after them."""
    out = []
    for tag in tags:
        contents, data = _der(data, tag)
        out.append(contents)
    if data:
        raise ValueError("unexpected DER after the last field")
    return out


def _uint(contents: bytes) -> int:
    """A non-negative DER INTEGER's value (minimal encoding, at most 8 bytes)."""
    if (not contents or len(contents) > 9 or contents[0] & 0x80
            or (len(contents) > 1 and contents[0] == 0 and not contents[1] & 0x80)):
        raise ValueError("bad DER integer")
    return int.from_bytes(contents, "big")


def _decrypt(params: _ScryptParams, kek: bytes, checked_by_caller: bool) -> object:
    """The private key inside ``params``' ciphertext; ValueError when the key encryption
    key is wrong (bad padding, or plaintext that is not a PKCS#8 key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    plain = bytearray(len(params.ciphertext) + 16)
    try:
        decryptor = Cipher(algorithms.AES(kek), modes.CBC(params.iv)).decryptor()
        size = decryptor.update_into(params.ciphertext, plain)
        # whole blocks in, whole blocks out: CBC without cryptography's own padding
        if decryptor.finalize() or size != len(params.ciphertext):
            raise ValueError("bad ciphertext")
        pad = plain[size - 1]
        if not 1 <= pad <= 16 or plain[size - pad:size] != bytes([pad]) * pad:
            raise ValueError("bad padding")
        with memoryview(plain)[:size - pad] as der:
            return serialization.load_der_private_key(
                der, None, unsafe_skip_rsa_key_validation=checked_by_caller)
    finally:
        plain[:] = bytes(len(plain))  # the plaintext key does not outlive the call here
