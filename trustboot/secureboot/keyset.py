"""A UEFI Secure Boot key set (PK, KEK, db) kept in the CA home, and its enrollment material.

Layout under ``PKI/secureboot/``: ``secureboot.json`` (owner GUID, the certificates'
SHA-256 fingerprints), ``PK.crt``/``KEK.crt``/``db.crt`` (PEM, 0644) and ``private/`` (0700)
with the keys encrypted like every CA key (0600). Certificates are read back only if their
fingerprint matches ``secureboot.json``: a certificate swapped in the directory is refused.

Profiles: RSA-2048 and SHA-256 (what every UEFI implementation takes; larger RSA keys and
ECDSA are refused by some firmware), self-signed with ``basicConstraints CA:TRUE`` as
``openssl req -x509`` makes them, and ``notBefore`` backdated a day. Firmware does not
check the validity period of db entries, but trustboot refuses to sign with an expired or
not yet valid db certificate so that a stale key set is noticed.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import parser
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from trustboot import fsutil
from trustboot.cms.sign import build_signed_data
from trustboot.errors import ConfigError, OperationalError
from trustboot.keys import keyfile
from trustboot.keys.signer import KeySigner
from trustboot.secrets import PassphraseSource, asked_once
from trustboot.secureboot import authenticode, efi
from trustboot.subproc import minimal_env
from trustboot.text import not_utf8

ROLES = ("PK", "KEK", "db")
# Who signs each variable's update: the PK signs itself (setup mode) and the KEK; the KEK
# signs db.
UPDATE_SIGNER = {"PK": "PK", "KEK": "PK", "db": "KEK"}
DIRNAME = "secureboot"
META = "secureboot.json"
DEFAULT_DAYS = 3650
MAX_CERT = 64 << 10
NO_PK_DELAY = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class KeySet:
    directory: Path
    owner: uuid.UUID
    certificates: dict[str, x509.Certificate]
    # Keys in a PKCS#11 token: {"module": path, "PK"/"KEK"/"db": key URI}; None when the
    # keys are encrypted files in private/.
    pkcs11: dict[str, str] | None = None

    def cert_path(self, role: str) -> Path:
        return self.directory / f"{role}.crt"

    def key_path(self, role: str) -> Path:
        return self.directory / "private" / f"{role}.key"


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _cn_suffix(role: str) -> str:
    return f" Secure Boot {role}"


# A certificate's common name holds at most 64 characters (X.520 ub-common-name), and
# the name is one with the longest role suffix (" Secure Boot KEK") appended.
MAX_NAME = 64 - max(len(_cn_suffix(role)) for role in ROLES)


def _certificate(role: str, name: str, key: rsa.RSAPrivateKey, now: dt.datetime,
                 days: int) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name + _cn_suffix(role))])
    not_before = now - dt.timedelta(days=1)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def init_keyset(pki: Path, passphrase: PassphraseSource, *, name: str, now: dt.datetime,
                days: int = DEFAULT_DAYS, owner: uuid.UUID | None = None,
                pkcs11: tuple[str, Path] | None = None) -> KeySet:
    """Create PK, KEK and db in ``pki/secureboot``. Refuses to overwrite a key set.

    Everything is written into a private staging directory first and renamed into place
    last, so a killed run leaves either no key set or a complete one. ``pkcs11=(token URI,
    module)``: the three keys are generated in that token instead (non-extractable) and
    sign there; ``passphrase`` then gives the token's PIN (asked once).
    """
    pki = Path(pki)
    if not pki.is_dir():
        raise ConfigError(f"CA home {pki} does not exist", hint="run `trustboot ca init` first")
    from trustboot.ca.store import check_pki_permissions

    # Before anything is created: keys made in a CA home others can write to could be
    # swapped at once, and every later command refuses that home anyway.
    check_pki_permissions(pki)
    target = pki / DIRNAME
    _refuse_existing(target)
    _check_name(name)
    if not 1 <= days <= 36500:
        raise ConfigError(f"--days {days} is out of range (1 to 36500)")
    if pkcs11 is None:
        secret = passphrase("the Secure Boot keys")
        keyfile.check_passphrase(secret, "the passphrase for the Secure Boot keys")
    else:
        secret = b""  # the PIN is asked when the token is first opened
        passphrase = asked_once(passphrase)
    owner = owner or uuid.uuid4()
    # The CA's lock, held as every CA write holds it: concurrent inits are serial from
    # here, so the second one finds the first one's key set and stops before generating
    # anything (in a token: before its keys could be mistaken for the winner's).
    with fsutil.locked(pki / ".lock"):
        _refuse_existing(target)
        _clean_staging(pki)
        staging = Path(tempfile.mkdtemp(prefix=".secureboot.", suffix=".tmp", dir=pki))
        with fsutil.holding_dir(staging):  # a live run's: never swept (_clean_staging)
            return _create(pki, staging, target, name=name, now=now, days=days,
                           owner=owner, pkcs11=pkcs11, passphrase=passphrase,
                           secret=secret)


def _check_name(name: str) -> None:
    """Refused before anything is made: a name no certificate can hold."""
    hint = "e.g. --name 'Example Boot'"
    if not name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ConfigError(f"key set name {name!r} is empty or holds control characters",
                          hint=hint)
    if not_utf8(name) is not None:
        raise ConfigError(f"key set name {name!r} is not valid UTF-8 text", hint=hint)
    if len(name) > MAX_NAME:
        raise ConfigError(
            f"key set name {name!r} is {len(name)} characters long; at most {MAX_NAME} "
            "fit: a certificate's common name holds 64 characters, and the KEK's is "
            f"'<name>{_cn_suffix('KEK')}'", hint=hint)


def _refuse_existing(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise _exists(target)


def _exists(target: Path) -> ConfigError:
    return ConfigError(f"{target} already holds a Secure Boot key set",
                       hint="keys enrolled in firmware are not replaced lightly; move it "
                            "away first if you really mean to start over")


def _create(pki: Path, staging: Path, target: Path, *, name: str, now: dt.datetime,
            days: int, owner: uuid.UUID, pkcs11: tuple[str, Path] | None,
            passphrase: PassphraseSource, secret: bytes) -> KeySet:
    """The key set written into ``staging`` and renamed onto ``target`` (the commit); on
    any failure before the rename, staging and the token keys this run made are removed."""
    token_refs: dict[str, str] = {}
    try:
        os.chmod(staging, 0o755)  # noqa: S103 - public certificates; keys are in private/
        fsutil.ensure_private_dir(staging / "private")
        meta: dict[str, object] = {"version": 1, "name": name, "owner_guid": str(owner),
                                   "created": now.astimezone(dt.UTC).isoformat(), "keys": {}}
        certs: dict[str, x509.Certificate] = {}
        for role in ROLES:
            if pkcs11 is None:
                key: rsa.RSAPrivateKey = rsa.generate_private_key(public_exponent=65537,
                                                                  key_size=2048)
                keyfile.write_key(staging / "private" / f"{role}.key", key, secret)
            else:
                key = _token_key(pkcs11, role, passphrase, token_refs)
            cert = _certificate(role, name, key, now, days)
            fsutil.atomic_write(staging / f"{role}.crt",
                                cert.public_bytes(serialization.Encoding.PEM),
                                mode=fsutil.PUBLIC_FILE_MODE)
            certs[role] = cert
            keys = meta["keys"]
            assert isinstance(keys, dict)
            keys[role] = {"cert": f"{role}.crt", "sha256": _fingerprint(cert),
                          "not_after": cert.not_valid_after_utc.isoformat()}
        token_meta = {"module": str(pkcs11[1]), **token_refs} if pkcs11 else None
        if token_meta:
            meta["pkcs11"] = token_meta
        fsutil.atomic_write(staging / META, json.dumps(meta, indent=2).encode() + b"\n",
                            mode=fsutil.PUBLIC_FILE_MODE)
        try:
            os.rename(staging, target)
        except OSError as exc:
            # (only a writer outside trustboot's lock gets here: it made PKI/secureboot
            # since the check; a directory is never renamed over a non-empty one)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise _exists(target) from None
            raise OperationalError(f"cannot move the new key set into {target}: "
                                   f"{exc.strerror}",
                                   hint="check the CA home's permissions and free space"
                                   ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if pkcs11 is not None and token_refs:  # no half key set in the token either
            from trustboot.keys.pkcs11 import destroy_generated

            destroy_generated(pkcs11[0], pkcs11[1], passphrase, list(token_refs.values()))
        raise
    # Committed: from here on the key set (and its token keys) is in place and stays.
    fsutil.fsync_dir(pki)
    return KeySet(target, owner, certs, token_meta)


def _token_key(pkcs11: tuple[str, Path], role: str, pin: PassphraseSource,
               refs: dict[str, str]) -> rsa.RSAPrivateKey:
    """A new RSA-2048 key in the token, labelled ``trustboot-sb-ROLE`` (a label the token
    already holds is refused, so a second key set never reuses another's keys)."""
    from trustboot.keys.pkcs11 import generate_key_pair, token_private_key

    token, module = pkcs11
    refs[role] = generate_key_pair(token, module, pin, label=f"trustboot-sb-{role}",
                                   kind="rsa", size=2048)
    key = token_private_key(refs[role], module, pin)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _clean_staging(pki: Path) -> None:
    """Remove staging directories left by a killed ``init`` (they never hold a key set
    anyone uses: the rename is the commit). Only unlocked ones: a live run holds its own
    (fsutil.holding_dir), and one of a run from before the CA lock was taken may be live."""
    fsutil.remove_unlocked_dirs(
        pki, lambda n: n.startswith(".secureboot.") and n.endswith(".tmp"), older_than=0)


def load_keyset(pki: Path) -> KeySet:
    directory = Path(pki) / DIRNAME
    meta_path = directory / META
    if not meta_path.is_file():
        raise ConfigError(f"no Secure Boot key set in {pki}",
                          hint="create one with `trustboot secureboot init`")
    # The recorded fingerprints live beside the certificates: they only mean something if
    # nobody else can write there (the same rule as for the CA's own directories).
    fsutil.check_not_link(directory, "Secure Boot key set")
    fsutil.check_owned_dir(Path(pki), "pki directory")
    fsutil.check_owned_dir(directory, "Secure Boot key set directory")
    fsutil.check_not_link(directory / "private", "Secure Boot private directory")
    fsutil.check_owned_dir(directory / "private", "Secure Boot private directory",
                           private=True)
    try:
        meta = json.loads(fsutil.read_capped(meta_path, 1 << 20, "Secure Boot metadata",
                                             nofollow=True))
        owner = uuid.UUID(meta["owner_guid"])
        recorded = {role: meta["keys"][role]["sha256"] for role in ROLES}
        token = meta.get("pkcs11")
        if token is not None and not (
                isinstance(token, dict) and all(isinstance(token.get(k), str) and token[k]
                                                for k in ("module", *ROLES))):
            raise ValueError("pkcs11")
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{meta_path} is damaged or incomplete",
                          hint="restore the key set from your backup") from None
    certs: dict[str, x509.Certificate] = {}
    for role in ROLES:
        path = directory / f"{role}.crt"
        try:
            cert = x509.load_pem_x509_certificate(
                fsutil.read_capped(path, MAX_CERT, f"{role} certificate", nofollow=True))
        except ValueError:
            raise ConfigError(f"{path} is not a PEM certificate",
                              hint="restore the key set from your backup") from None
        if _fingerprint(cert) != recorded[role]:
            raise ConfigError(f"{path} is not the {role} certificate recorded in {META}",
                              hint="someone replaced it: restore it from your backup and "
                                   "check who can write to the CA home")
        certs[role] = cert
    return KeySet(directory, owner, certs, token)


def open_signer(keyset: KeySet, role: str, passphrase: PassphraseSource, *,
                now: dt.datetime) -> KeySigner:
    """The role's key, unlocked, after checking its certificate is valid at ``now``."""
    cert = keyset.certificates[role]
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"the {role} certificate is not valid until "
                          f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z",
                          hint="check this machine's clock")
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"the {role} certificate expired on "
                          f"{cert.not_valid_after_utc:%Y-%m-%d}",
                          hint="create and enroll a new key set (firmware ignores the date, "
                               "but an expired key set is one nobody is looking after)")
    if keyset.pkcs11 is not None:
        from trustboot.keys.pkcs11 import token_private_key

        key: keyfile.PrivateKey = token_private_key(keyset.pkcs11[role],
                                                    Path(keyset.pkcs11["module"]), passphrase)
    else:
        key = keyfile.load_key(keyset.key_path(role), passphrase,
                               f"the Secure Boot {role} key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"the {role} key is not RSA")
    return KeySigner(key, cert, [])


def _pkcs7_signer(signer: KeySigner) -> Callable[[bytes], bytes]:
    cert = signer.certificate.public_bytes(serialization.Encoding.DER)

    def sign(digest: bytes) -> bytes:
        info = build_signed_data(cert, [], "sha256", "rsa", signer.sign_digest(digest, "sha256"))
        # UEFI wants the bare SignedData (as efitools writes it), not the ContentInfo around it.
        return _inner_signed_data(info)
    return sign


def _inner_signed_data(content_info: bytes) -> bytes:
    """The SignedData inside a DER ContentInfo: past the OID and the [0] wrapper."""
    body = parser.parse(content_info)[4]
    return bytes(parser.parse(body[parser.peek(body):])[4])


def sign_efi(data: bytes, what: str, signer: KeySigner) -> bytes:
    """``data`` signed (Authenticode, SHA-256) with the db key."""
    return authenticode.sign_image(
        data, what, signer.certificate, [],
        lambda digest: signer.sign_digest(digest, "sha256"))


def export(keyset: KeySet, out: Path, passphrase: PassphraseSource, *, now: dt.datetime,
           ovmf_template: Path | None = None) -> list[Path]:
    """Write the enrollment material into ``out`` (created 0755; an existing one must be
    ours and not writable by others; existing files of the same names are replaced
    atomically). Returns the files written."""
    out = Path(out)
    # The variable store first: a template that is not one is refused with nothing written.
    ovmf = ovmf_vars(keyset, ovmf_template) if ovmf_template is not None else None
    # whoever can write there could swap the enrollment files before they are enrolled
    fsutil.make_output_dir(out, "export directory")
    passphrase = asked_once(passphrase)  # one passphrase (or PIN) for PK and KEK
    signers = {role: open_signer(keyset, role, passphrase, now=now) for role in ("PK", "KEK")}
    written: list[Path] = []

    def put(name: str, data: bytes, mode: int = fsutil.PUBLIC_FILE_MODE) -> None:
        try:
            fsutil.atomic_write(out / name, data, mode=mode)
        except OSError as exc:
            raise OperationalError(f"cannot write {out / name}: {exc.strerror}") from None
        written.append(out / name)

    for role in ROLES:
        cert = keyset.certificates[role]
        der = cert.public_bytes(serialization.Encoding.DER)
        esl = efi.x509_list([der], keyset.owner)
        put(f"{role}.crt", cert.public_bytes(serialization.Encoding.PEM))
        put(f"{role}.cer", der)
        put(f"{role}.esl", esl)
        put(f"{role}.auth", efi.auth_update(role, esl, now,
                                            _pkcs7_signer(signers[UPDATE_SIGNER[role]])))
    # The owner's way back to setup mode: an empty PK update signed by the PK deletes it.
    # Firmware takes a PK update only with a timestamp later than the stored one, so it is
    # dated a second after the PK.auth written with it. Private: whoever holds it can turn
    # Secure Boot enforcement off on every machine with this PK.
    put("noPK.auth", efi.auth_update("PK", b"", now + NO_PK_DELAY,
                                     _pkcs7_signer(signers["PK"])), mode=fsutil.PRIVATE_FILE_MODE)
    put("owner-guid.txt", f"{keyset.owner}\n".encode())
    put("ENROLL.md", _enroll_readme(keyset).encode())
    if ovmf is not None:
        put("OVMF_VARS.secboot.fd", ovmf)
    return written


def _virt_fw_vars() -> str:
    local = Path(sys.executable).with_name("virt-fw-vars")
    found = str(local) if local.is_file() else shutil.which("virt-fw-vars")
    if not found:
        raise ConfigError("virt-fw-vars is not installed (needed for the OVMF variables file)",
                          hint="pip install 'trustboot[secureboot]' (PyPI virt-firmware)")
    return found


def ovmf_vars(keyset: KeySet, template: Path) -> bytes:
    """An OVMF variable store from ``template`` with PK, KEK and db enrolled and Secure Boot
    on (no Microsoft keys: only what this key set signed will start).

    virt-firmware (GPL-2.0) runs as a separate program rather than being imported.
    """
    template = Path(template)
    data = fsutil.read_capped(template, 64 << 20, "OVMF variables template")
    # (work_dir: a TMPDIR others can write is refused; they could swap vars.fd for a
    # store with their own PK before it is read)
    with fsutil.work_dir("trustboot-ovmf-") as tmp:
        src = Path(tmp) / "template.fd"
        src.write_bytes(data)
        dst = Path(tmp) / "vars.fd"
        owner = str(keyset.owner)
        # Absolute paths: a relative --pki starting with '-' must not read as an option.
        certs = {role: str(keyset.cert_path(role).resolve()) for role in ROLES}
        argv = [_virt_fw_vars(), "--input", str(src), "--output", str(dst),
                "--set-pk", owner, certs["PK"], "--add-kek", owner, certs["KEK"],
                "--add-db", owner, certs["db"],
                "--no-microsoft", "--secure-boot"]
        proc = subprocess.run(argv, capture_output=True, text=True, env=minimal_env(),
                              check=False,
                              timeout=120)
        if proc.returncode != 0 or not dst.is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(f"{template} is not an OVMF variable store virt-fw-vars can use "
                              f"({detail[0]})",
                              hint="pass OVMF's VARS template, e.g. "
                                   "/usr/share/OVMF/OVMF_VARS_4M.fd (Debian package ovmf)")
        return dst.read_bytes()


def _enroll_readme(keyset: KeySet) -> str:
    fps = "\n".join(f"- {role}: SHA-256 {_fingerprint(c)}"
                    for role, c in keyset.certificates.items())
    return f"""# Enrolling this Secure Boot key set

Owner GUID: {keyset.owner}

{fps}

Files: `PK/KEK/db` as `.crt` (PEM), `.cer` (DER), `.esl` (EFI signature list) and `.auth`
(signed update: PK and KEK signed by PK, db signed by KEK), and `noPK.auth` (see 5).

1. Put the firmware in **setup mode** (firmware setup: "Reset to setup mode" / "Clear
   Secure Boot keys"). Keep the vendor keys if other operating systems must still boot:
   then enroll only `db` (append) and keep the firmware's PK/KEK.
2. Enroll in this order, db first and PK last (enrolling PK leaves setup mode):
   - from Linux (efitools): `efi-updatevar -e -f db.esl db`,
     `efi-updatevar -e -f KEK.esl KEK`, `efi-updatevar -f PK.auth PK`
   - with KeyTool.efi: Edit Keys → db / KEK / PK → Add New Key → pick the `.auth` files
   - in firmware setup screens that import files: pick `.cer` or `.auth` as offered.
3. Turn Secure Boot on. Only EFI binaries signed by this db key start
   (`trustboot secureboot sign` / `trustboot ipxe build --secureboot-sign db`).
4. Virtual machines: `OVMF_VARS.secboot.fd` (when exported with `--ovmf-vars`) already has
   the keys enrolled and Secure Boot on; use it with `OVMF_CODE_4M.secboot.fd` and
   `-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on`.

5. Back to setup mode (to enroll other keys, or hand the machine on): write `noPK.auth`
   to PK, e.g. `efi-updatevar -f noPK.auth PK`. It is an empty PK signed by the PK, so
   only the key set's owner can make it; firmware takes it only while the enrolled PK is
   this one and was enrolled from a `PK.auth` older than it (the same or an earlier export).
   Keep it offline: anyone holding it can switch Secure Boot enforcement off.

Keep `private/` of the key set offline-backed-up: losing the PK key means resetting the
firmware to setup mode to change anything.
"""
