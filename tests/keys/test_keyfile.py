"""Key files: the GIL-free scrypt path, what it leaves to cryptography, and KeyLoad."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core
from asn1crypto import pem as armor
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.cms.corpus import pem
from tests.cms.pki import PASSPHRASE, Material, ec_key, rsa_key
from tests.procs import count_forks
from trustboot import secrets
from trustboot.cms.workflow import sign_paths
from trustboot.errors import ConfigError, VerificationError
from trustboot.keys import keyfile
from trustboot.keys.keyfile import KeyLoad, load_key, start_signing_key_load, write_key

RIGHT = secrets.constant(PASSPHRASE)
DAY = dt.timedelta(days=1)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    return d


def _public(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))


def _no_openssl_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """cryptography's PEM loader (which holds the GIL through the KDF) must not run."""
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("cryptography's PEM loader was used")
    monkeypatch.setattr(serialization, "load_pem_private_key", refuse)


def _watch_scrypt(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """The (N, r, p) of every hashlib.scrypt call from now on."""
    calls: list[tuple[int, int, int]] = []
    real = hashlib.scrypt

    def watched(*a: Any, **k: Any) -> bytes:
        calls.append((k["n"], k["r"], k["p"]))
        return real(*a, **k)

    monkeypatch.setattr(hashlib, "scrypt", watched)
    return calls


def _private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _openssl_pkcs8(keydir: Path, key: Any, name: str, *args: str) -> Path:
    plain = keydir / f"{name}.plain"
    plain.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    out = keydir / f"{name}.key"
    subprocess.run(["openssl", "pkcs8", "-topk8", "-in", str(plain), "-out", str(out),
                    "-passout", "env:TB_PW", *args], check=True,
                   env={**os.environ, "TB_PW": PASSPHRASE.decode()})
    plain.unlink()
    out.chmod(0o600)
    return out


def _pem(der: bytes) -> bytes:
    armored: bytes = armor.armor("ENCRYPTED PRIVATE KEY", der)
    return armored


_seq = keyfile._seq


def _pbes2(n: int, r: int, p: int, *, ciphertext: bytes = b"\x00" * 32,
           key_length: int | None = None, trailing: bytes = b"") -> bytes:
    """A PBES2(scrypt, AES-256-CBC) key file with these parameters, as a hostile or
    careless writer could make it."""
    numbers = [n, r, p] + ([key_length] if key_length is not None else [])
    params = _seq(core.OctetString(b"s" * 16).dump(),
                  *(core.Integer(v).dump() for v in numbers))
    kdf = _seq(core.ObjectIdentifier(keyfile._OID_SCRYPT).dump(), params)
    scheme = _seq(core.ObjectIdentifier(keyfile._OID_AES256_CBC).dump(),
                  core.OctetString(b"i" * 16).dump())
    alg = _seq(core.ObjectIdentifier(keyfile._OID_PBES2).dump(), _seq(kdf, scheme))
    return _pem(_seq(alg, core.OctetString(ciphertext).dump()) + trailing)


@pytest.mark.parametrize("make", [rsa_key, ec_key], ids=["rsa", "ecdsa"])
@pytest.mark.parametrize("checked", [False, True])
def test_own_key_files_load_without_cryptographys_kdf(
        keydir: Path, monkeypatch: pytest.MonkeyPatch, make: Any, checked: bool) -> None:
    key = make()
    path = keydir / "k.key"
    write_key(path, key, PASSPHRASE)
    _no_openssl_kdf(monkeypatch)
    loaded = load_key(path, RIGHT, "test key", checked_by_caller=checked)
    assert _public(loaded) == _public(key)
    assert isinstance(loaded, rsa.RSAPrivateKey if isinstance(key, rsa.RSAPrivateKey)
                      else ec.EllipticCurvePrivateKey)


def test_openssl_scrypt_key_files_take_the_same_path(keydir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key = rsa_key()
    path = _openssl_pkcs8(keydir, key, "ossl", "-scrypt")
    params = keyfile._scrypt_pbes2(path.read_bytes())
    assert params is not None and (params.n, params.r, params.p) == (1 << 14, 8, 1)
    _no_openssl_kdf(monkeypatch)
    assert _public(load_key(path, RIGHT, "openssl key")) == _public(key)


def test_other_encryptions_are_left_to_cryptography(keydir: Path) -> None:
    key = ec_key()
    path = _openssl_pkcs8(keydir, key, "pbkdf2", "-v2", "aes-256-cbc")
    assert keyfile._scrypt_pbes2(path.read_bytes()) is None
    assert _public(load_key(path, RIGHT, "pbkdf2 key")) == _public(key)
    with pytest.raises(ConfigError, match="wrong passphrase for pbkdf2 key"):
        load_key(path, secrets.constant(b"not the passphrase"), "pbkdf2 key")


def test_wrong_passphrase_and_damaged_files_are_named(keydir: Path) -> None:
    path = keydir / "k.key"
    write_key(path, rsa_key(), PASSPHRASE)
    with pytest.raises(ConfigError, match=r"wrong passphrase for signing key k \("):
        load_key(path, secrets.constant(b"wrong passphrase!"), "signing key k")
    params = keyfile._scrypt_pbes2(path.read_bytes())
    assert params is not None
    # a flipped byte in the first block garbles the PKCS#8 header; in the second-to-last
    # block, the padding
    for index in (0, len(params.ciphertext) - 17):
        damaged = bytearray(params.ciphertext)
        damaged[index] ^= 0x01
        kek = hashlib.scrypt(PASSPHRASE, salt=params.salt, n=params.n, r=params.r,
                             p=params.p, maxmem=keyfile.SCRYPT_MAXMEM, dklen=32)
        broken = keyfile._ScryptParams(params.salt, params.n, params.r, params.p, params.iv,
                                       bytes(damaged))
        with pytest.raises(ValueError):
            keyfile._decrypt(broken, kek, False)
    truncated = _private(keydir / "t.key", path.read_bytes()[:400]
                         + b"\n-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"wrong passphrase|damaged|could not be decrypted"):
        load_key(truncated, RIGHT, "truncated key")


@pytest.mark.parametrize(("n", "r", "p", "kdf_runs"), [
    (1 << 30, 8, 1, False),  # 128 GiB: OpenSSL fails with an "internal error"
    (1 << 14, 8, 64, False),  # 64 times the default work: seconds, in little memory
    (1 << 14, 8, 1 << 20, False),
    # within the work limit, but OpenSSL's p * 128 * r byte buffer is 256 MiB: hashlib's
    # maxmem refuses it
    (2, 1, 1 << 21, True),
])
def test_scrypt_parameters_beyond_the_limits_are_refused_unrun(
        keydir: Path, monkeypatch: pytest.MonkeyPatch, n: int, r: int, p: int,
        kdf_runs: bool) -> None:
    path = _private(keydir / "costly.key", _pbes2(n, r, p))
    calls = _watch_scrypt(monkeypatch)
    _no_openssl_kdf(monkeypatch)
    with pytest.raises(ConfigError, match=f"asks scrypt for more .*N={n}, r={r}, p={p}"):
        load_key(path, RIGHT, "costly key")
    assert calls == ([(n, r, p)] if kdf_runs else [])


def test_stronger_parameters_within_the_limits_are_used(
        keydir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key someone encrypted with more work than trustboot's default (here 4x) loads,
    through the same path."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = ec_key()
    n, r, p = 1 << 15, 8, 2
    kek = hashlib.scrypt(PASSPHRASE, salt=b"s" * 16, n=n, r=r, p=p, maxmem=64 << 20,
                         dklen=32)
    padder = padding.PKCS7(128).padder()
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    encryptor = Cipher(algorithms.AES(kek), modes.CBC(b"i" * 16)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize())
    path = _private(keydir / "strong.key", _pbes2(
        n, r, p, ciphertext=ciphertext + encryptor.finalize(), key_length=32))
    _no_openssl_kdf(monkeypatch)
    assert _public(load_key(path, RIGHT, "strong key")) == _public(key)
    with pytest.raises(ConfigError, match="wrong passphrase for strong key"):
        load_key(path, secrets.constant(b"not the passphrase"), "strong key")


def _salt_iterations(oid: str, iterations: int, *, pbes2: bool = True,
                     prf: bytes = b"") -> bytes:
    """A key file encrypted with PBKDF2 (in PBES2) or an older scheme whose parameters are
    (salt, iterations): PBES1, PKCS#12 PBE."""
    params = _seq(core.OctetString(b"s" * 8).dump(), core.Integer(iterations).dump(), prf)
    if pbes2:
        kdf = _seq(core.ObjectIdentifier(keyfile._OID_PBKDF2).dump(), params)
        scheme = _seq(core.ObjectIdentifier(keyfile._OID_AES256_CBC).dump(),
                      core.OctetString(b"i" * 16).dump())
        alg = _seq(core.ObjectIdentifier(keyfile._OID_PBES2).dump(), _seq(kdf, scheme))
    else:
        alg = _seq(core.ObjectIdentifier(oid).dump(), params)
    return _pem(_seq(alg, core.OctetString(b"\x00" * 32).dump()))


def _never_asked(what: str) -> bytes:
    raise AssertionError(f"the passphrase for {what} was asked for")


HMAC_SHA256 = _seq(core.ObjectIdentifier("1.2.840.113549.2.9").dump(), core.Null().dump())


@pytest.mark.parametrize(("pem", "name", "iterations"), [
    (_salt_iterations("", 1 << 31), "PBKDF2", 1 << 31),
    (_salt_iterations("", 4_000_001, prf=HMAC_SHA256), "PBKDF2", 4_000_001),
    # pbeWithSHAAnd3-KeyTripleDES-CBC (PKCS#12), pbeWithSHA1AndDES-CBC (PBES1)
    (_salt_iterations("1.2.840.113549.1.12.1.3", 10 ** 9, pbes2=False),
     "its password-based encryption", 10 ** 9),
    (_salt_iterations("1.2.840.113549.1.5.10", 50_000_000, pbes2=False),
     "its password-based encryption", 50_000_000),
], ids=["pbkdf2-2^31", "pbkdf2-sha256-limit+1", "pkcs12", "pbes1"])
def test_costly_iteration_counts_are_refused_before_any_kdf_or_prompt(
        keydir: Path, monkeypatch: pytest.MonkeyPatch, pem: bytes, name: str,
        iterations: int) -> None:
    """OpenSSL runs whatever iteration count a key file asks for (2^31 PBKDF2 rounds:
    about ten minutes here) before it can tell a wrong passphrase."""
    path = _private(keydir / "costly.key", pem)
    _no_openssl_kdf(monkeypatch)
    with pytest.raises(ConfigError, match=f"costly.key asks {name} for {iterations} "
                       "iterations") as err:
        load_key(path, _never_asked, "costly key")
    assert "openssl pkcs8 -topk8 -scrypt" in (err.value.hint or "")


def test_scrypt_in_another_cipher_is_held_to_the_same_limits(
        keydir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PBES2(scrypt, AES-128-CBC) is not the format read here (cryptography's loader gets
    it), but its scrypt parameters are checked all the same."""
    _, _, der = armor.unarmor(_pbes2(1 << 14, 8, 64))
    aes128 = core.ObjectIdentifier("2.16.840.1.101.3.4.1.2").dump()
    der = der.replace(core.ObjectIdentifier(keyfile._OID_AES256_CBC).dump(), aes128)
    path = _private(keydir / "aes128.key", _pem(der))
    assert keyfile._scrypt_pbes2(path.read_bytes()) is None
    _no_openssl_kdf(monkeypatch)
    with pytest.raises(ConfigError, match=r"asks scrypt for more .*N=16384, r=8, p=64"):
        load_key(path, _never_asked, "aes128 key")


def test_a_pbkdf2_key_within_the_limit_loads(keydir: Path) -> None:
    key = ec_key()
    path = _openssl_pkcs8(keydir, key, "strong-pbkdf2", "-v2", "aes-256-cbc", "-iter",
                          "600000")
    assert _public(load_key(path, RIGHT, "strong pbkdf2 key")) == _public(key)


def test_a_tls_client_key_with_a_costly_kdf_is_refused(keydir: Path,
                                                       material: Material) -> None:
    """The origin's TLS client key goes to OpenSSL through the ssl module: checked first,
    whether it is a file of its own or follows the certificate in one file."""
    from trustboot.publish.http import tls_context

    hostile = _salt_iterations("", 1 << 31)
    cert = keydir / "client.crt"
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    key = _private(keydir / "client.key", hostile)
    ca = keydir / "ca.crt"
    ca.write_bytes(pem(material.root))
    with pytest.raises(ConfigError, match=f"client key {key} asks PBKDF2 for 2147483648"):
        tls_context(ca_file=ca, client_cert=cert, client_key=key,
                    client_key_passphrase=PASSPHRASE)
    both = _private(keydir / "both.pem", cert.read_bytes() + hostile)
    with pytest.raises(ConfigError, match=f"client key {both} asks PBKDF2"):
        tls_context(ca_file=ca, client_cert=both, client_key_passphrase=PASSPHRASE)


@pytest.mark.parametrize(("pem", "why"), [
    (_pbes2(3 << 10, 8, 1), "N not a power of two"),
    (_pbes2(1 << 14, 0, 1), "r = 0"),
    (_pbes2(1 << 14, 8, 1, key_length=16), "a 128-bit key for AES-256"),
    (_pbes2(1 << 14, 8, 1, ciphertext=b"\x00" * 31), "ciphertext not whole blocks"),
    (_pbes2(1 << 14, 8, 1, trailing=b"\x00"), "bytes after the structure"),
    (b"garbage -----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
     b"-----END ENCRYPTED PRIVATE KEY-----\n", "text before the PEM block"),
])
def test_unusual_or_hostile_parameters_never_reach_hashlib(
        keydir: Path, monkeypatch: pytest.MonkeyPatch, pem: bytes, why: str) -> None:
    assert keyfile._scrypt_pbes2(pem) is None, why
    path = _private(keydir / "hostile.key", pem)
    ran = _watch_scrypt(monkeypatch)
    with pytest.raises(ConfigError):
        load_key(path, RIGHT, "hostile key")
    assert ran == []


def test_non_minimal_der_is_refused_by_the_reader() -> None:
    with pytest.raises(ValueError, match="non-minimal"):
        keyfile._der(b"\x04\x81\x05hello", 0x04)
    with pytest.raises(ValueError, match="bad DER length"):
        keyfile._der(b"\x04\x82\x00\x05hello", 0x04)
    with pytest.raises(ValueError, match="bad DER integer"):
        keyfile._uint(b"\x00\x05")
    with pytest.raises(ValueError, match="bad DER integer"):
        keyfile._uint(b"\x85")  # negative
    assert keyfile._der(b"\x04\x05hello!", 0x04) == (b"hello", b"!")


def test_keyload_returns_the_key_or_raises_in_the_callers_thread(keydir: Path) -> None:
    key = ec_key()
    path = keydir / "k.key"
    write_key(path, key, PASSPHRASE)
    asked: list[str] = []

    def source(what: str) -> bytes:
        asked.append(f"{what} in {threading.current_thread().name}")
        return PASSPHRASE

    load = KeyLoad(path, source, "signing key k")
    assert _public(load.result()) == _public(key)
    assert asked == ["signing key k in trustboot-unlock"]
    assert load.result() is load.result()  # once loaded, kept
    bad = KeyLoad(path, secrets.constant(b"not the passphrase"), "signing key k")
    bad.wait()  # finished, and the error kept for result()
    assert not bad._thread.is_alive() and bad._thread.daemon
    with pytest.raises(ConfigError, match="wrong passphrase for signing key k"):
        bad.result()


def test_sign_paths_takes_the_load_begun_ahead(material: Material, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from trustboot.cms.digest import HashJob
    from trustboot.cms.sign import PARALLEL_SIGN_MIN

    key, cert, chain = material.issue("ahead-signer", rsa_key())
    files = []
    for i in range(PARALLEL_SIGN_MIN + 2):
        (tmp_path / f"f{i}").write_bytes(b"%d" % i)
        files.append(tmp_path / f"f{i}")
    asked: list[str] = []

    def source(what: str) -> bytes:
        asked.append(what)
        return PASSPHRASE

    hashing = HashJob(files, "sha256")  # first, as the CLI does: it may fork
    ahead = start_signing_key_load(key, source)
    forks = count_forks(monkeypatch)
    run = sign_paths(files, f"file:{key}", secrets=source, cert=cert, chain=chain,
                     hashing=hashing, key_ahead=ahead)
    assert len(run.results) == len(files)
    assert asked == [f"signing key {key.stem}"]  # unlocked once, by the load begun ahead
    # the load's thread was done before signing: the batch was split over processes
    assert forks, "sign_many did not fork: a thread was still running"


def test_a_load_for_another_key_is_not_used(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("real-signer", ec_key())
    other_key, _, _ = material.issue("other-ahead", ec_key())
    image = tmp_path / "image"
    image.write_bytes(b"image")

    def slow(_what: str) -> bytes:
        time.sleep(0.5)  # still running when the signing is done, unless waited for
        return PASSPHRASE

    ahead = start_signing_key_load(other_key, slow)
    run = sign_paths([image], f"file:{key}", secrets=RIGHT, cert=cert, chain=chain,
                     key_ahead=ahead)
    assert run.results[0].signature_path.is_file()  # signed with real-signer's key
    assert not ahead._thread.is_alive()  # no thread left for a later fork to meet
    # and one started with another passphrase source is not taken either
    asked: list[str] = []

    def source(what: str) -> bytes:
        asked.append(what)
        return PASSPHRASE

    ahead = start_signing_key_load(key, slow)
    sign_paths([image], f"file:{key}", secrets=source, cert=cert, chain=chain,
               key_ahead=ahead)
    assert asked == [f"signing key {key.stem}"]
    assert not ahead._thread.is_alive()


def test_sign_paths_checks_the_signer_and_targets_once(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sign_hashed takes sign_paths' verdict for the opened signer (same certificate and
    chain) instead of preflighting it and checking the targets a second time."""
    from trustboot.cms import sign as cms_sign

    key, cert, chain = material.issue("once-signer", rsa_key())
    image = tmp_path / "image"
    image.write_bytes(b"image")
    calls: list[str] = []
    for name in ("preflight", "check_targets"):
        real = getattr(cms_sign, name)

        def counted(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            calls.append(_name)
            return _real(*a, **k)
        monkeypatch.setattr(cms_sign, name, counted)
    run = sign_paths([image], f"file:{key}", secrets=RIGHT, cert=cert, chain=chain)
    assert run.results[0].signature_path.is_file()
    assert sorted(calls) == ["check_targets", "preflight"]


def test_an_opened_signer_with_another_certificate_is_preflighted_again(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source whose opened signer holds another certificate gets no pass from the
    source's verdict: it is refused and nothing is written. Here one that expired an hour
    ago: only preflight refuses it (iPXE's 12h30m margin, which the self-check of the
    first signature follows, would still take it)."""
    from cryptography import x509

    from trustboot.keys import signer as signers

    now = dt.datetime.now(dt.UTC)
    key, cert, chain = material.issue("good-source", rsa_key())
    _, old_cert, _ = material.issue("expired-opened", load_key(key, RIGHT, "k"),
                                    not_before=now - 400 * DAY,
                                    not_after=now - dt.timedelta(hours=1))
    expired = x509.load_pem_x509_certificate(old_cert.read_bytes())
    real_unlock = signers.PendingSigner.unlock

    def unlock(self: signers.PendingSigner, passphrases: Any) -> signers.KeySigner:
        opened = real_unlock(self, passphrases)
        return signers.KeySigner(load_key(key, RIGHT, "k"), expired, opened.chain)
    monkeypatch.setattr(signers.PendingSigner, "unlock", unlock)
    image = tmp_path / "image"
    image.write_bytes(b"image")
    with pytest.raises(VerificationError, match="expired"):
        sign_paths([image], f"file:{key}", secrets=RIGHT, cert=cert, chain=chain)
    assert not (tmp_path / "image.sig").exists()


def test_a_doomed_signer_is_refused_before_a_wrong_passphrase(material: Material,
                                                              tmp_path: Path) -> None:
    """The load begun ahead fails (wrong passphrase), but the error a user sees is still
    the one found first without it: the expired certificate."""
    now = dt.datetime.now(dt.UTC)
    key, cert, chain = material.issue("expired-ahead", rsa_key(), not_before=now - 400 * DAY,
                                      not_after=now - DAY,
                                      eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    image = tmp_path / "image"
    image.write_bytes(b"image")

    def wrong(_what: str) -> bytes:
        time.sleep(0.5)  # still running when the refusal comes, unless waited for
        return b"not the passphrase"

    ahead = start_signing_key_load(key, wrong)
    with pytest.raises(VerificationError, match="expired"):
        sign_paths([image], f"file:{key}", secrets=wrong, cert=cert, chain=chain,
                   key_ahead=ahead)
    assert not (tmp_path / "image.sig").exists()
    assert not ahead._thread.is_alive()  # no thread of the call outlives it


def _openssl_traditional(keydir: Path, key: Any, name: str, cipher: str) -> Path:
    """A legacy PEM key file (Proc-Type/DEK-Info) encrypted with ``cipher``."""
    plain = keydir / f"{name}.plain"
    plain.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    out = keydir / f"{name}.key"
    subprocess.run(["openssl", "pkey", "-in", str(plain), "-traditional", f"-{cipher}",
                    "-out", str(out), "-passout", "env:TB_PW"], check=True,
                   env={**os.environ, "TB_PW": PASSPHRASE.decode()})
    plain.unlink()
    out.chmod(0o600)
    return out


_LEGACY = ("-provider", "legacy", "-provider", "default")
WEAK_PKCS8 = {
    "pbes1-rc2-40": ("-v1", "PBE-SHA1-RC2-40", *_LEGACY),
    "pbes1-des": ("-v1", "PBE-MD5-DES", *_LEGACY),
    "pkcs12-3des": ("-v1", "PBE-SHA1-3DES"),
    "pbes2-des": ("-v2", "des", *_LEGACY),
    "pbes2-3des": ("-v2", "des3"),
}


@pytest.mark.parametrize("scheme", sorted(WEAK_PKCS8))
def test_keys_encrypted_with_anything_but_aes_are_refused(
        keydir: Path, scheme: str) -> None:
    """An unencrypted key is refused; so is one 'encrypted' with 40-bit RC2, single DES
    or the old PBES1/PKCS#12 schemes: refused before the passphrase is asked for, with
    the command that re-encrypts it."""
    path = _openssl_pkcs8(keydir, ec_key(), scheme, *WEAK_PKCS8[scheme])
    with pytest.raises(ConfigError, match=f"key file {path} is encrypted with") as err:
        load_key(path, _never_asked, "weak key")
    assert "openssl pkcs8 -topk8 -scrypt" in (err.value.hint or "")


def test_legacy_pem_keys_are_accepted_in_aes_only(keydir: Path) -> None:
    key = ec_key()
    des3 = _openssl_traditional(keydir, key, "des3", "des3")
    with pytest.raises(ConfigError, match=f"key file {des3} is encrypted with DES-EDE3-CBC"):
        load_key(des3, _never_asked, "weak key")
    aes = _openssl_traditional(keydir, key, "aes", "aes256")
    assert _public(load_key(aes, RIGHT, "aes key")) == _public(key)
    aes128 = _openssl_pkcs8(keydir, key, "aes128", "-v2", "aes-128-cbc")
    assert _public(load_key(aes128, RIGHT, "aes-128 key")) == _public(key)


def test_a_tls_client_key_with_weak_encryption_is_refused(keydir: Path,
                                                         material: Material) -> None:
    from trustboot.publish.http import tls_context

    key = _openssl_pkcs8(keydir, ec_key(), "client", *WEAK_PKCS8["pbes1-rc2-40"])
    cert = keydir / "client.crt"
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    ca = keydir / "ca.crt"
    ca.write_bytes(pem(material.root))
    with pytest.raises(ConfigError, match=f"client key {key} is encrypted with"):
        tls_context(ca_file=ca, client_cert=cert, client_key=key,
                    client_key_passphrase=PASSPHRASE)
