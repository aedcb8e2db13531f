"""Keys in a PKCS#11 token or HSM, named by RFC 7512 URIs.

cryptography cannot use a key it cannot read, so the token signs the digest the host
computed: RSA PKCS#1 v1.5 (CKM_RSA_PKCS over a DigestInfo) or ECDSA (CKM_ECDSA, whose raw
r||s is converted to the DER Ecdsa-Sig-Value CMS needs). One login per run, however many
files; the session is closed when the ``with`` block ends. python-pkcs11 is imported only
here, so it is needed only for pkcs11: references (extra ``trustboot[pkcs11]``).

The PIN comes from the caller's callback (a prompt, --pin-file, --pin-env) or the URI's
``pin-source=`` file; a ``pin-value=`` in the URI is refused (it would sit in argv, shell
history and CI logs) and masked wherever the reference is shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from trustboot import secrets as secret_sources
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.fsutil import others_can_write
from trustboot.keys.algorithms import HashAlgorithm, KeyAlgorithm
from trustboot.keys.ref import KeyRef, carries_pin, mask_pin
from trustboot.keys.signer import (
    CertifiedSigner,
    KeySource,
    ResolveOptions,
    SecretKind,
    Signer,
    load_certificates,
    order_chain,
    revoked_error,
)
from trustboot.run import keep_for_run
from trustboot.secrets import PassphraseSource

if TYPE_CHECKING:
    pass

_PATH_ATTRS = {"token", "manufacturer", "serial", "model", "library-manufacturer",
               "library-description", "library-version", "object", "type", "id",
               "slot-manufacturer", "slot-description", "slot-id"}
_QUERY_ATTRS = {"pin-source", "pin-value", "module-name", "module-path"}
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TYPES = {"private", "public", "cert", "secret-key", "data"}
_MISMATCH_HINT = ("pass the certificate issued for this key (--signing-cert), or fix "
                  "id=/object=")
INSTALL_HINT = "install python-pkcs11: pip install 'trustboot[pkcs11]'"
MODULE_HINT = ("name the token's PKCS#11 module: --pkcs11-module /path/to/module.so "
               "(or TRUSTBOOT_PKCS11_MODULE, or module-path= in the URI); SoftHSM2's is "
               "/usr/lib/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class Pkcs11Uri:
    """The attributes of a ``pkcs11:`` URI (RFC 7512), percent-decoded."""

    text: str  # for messages: pin-value masked
    path: dict[str, bytes] = field(default_factory=dict)
    query: dict[str, bytes] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        raw = self.path.get(name, self.query.get(name))
        if raw is None:
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ConfigError(f"attribute {name} of {self.text} is not UTF-8",
                              hint="percent-encode it as UTF-8") from None

    @property
    def id(self) -> bytes | None:
        return self.path.get("id")


def _shown_label(label: str) -> str:
    # a slot's empty label is SoftHSM2's (and others') spare, uninitialised token
    return repr(label) if label.strip() else "an uninitialised token (no label)"


def parse_uri(text: str, *, require_key: bool = True) -> Pkcs11Uri:
    """``require_key=False`` for a URI naming only a token (where CA keys are generated)."""
    if carries_pin(text):  # first: no part of such a URI is shown, however it is spelt
        raise ConfigError(
            "the pkcs11: URI carries the PIN itself (pin-value=); refusing, as it would be "
            "in argv, shell history and logs",
            hint="use --pin-file FILE, --pin-env NAME, or pin-source=FILE in the URI")
    shown = mask_pin(text)
    scheme, _, rest = text.partition(":")
    if scheme.lower() != "pkcs11":
        raise ConfigError(f"{shown!r} is not a pkcs11: URI", hint="pkcs11:token=T;object=O")
    path_part, _, query_part = rest.partition("?")
    uri = Pkcs11Uri(shown)
    for part, sep, allowed, into in ((path_part, ";", _PATH_ATTRS, uri.path),
                                     (query_part, "&", _QUERY_ATTRS, uri.query)):
        for item in filter(None, part.split(sep)):
            name, eq, value = item.partition("=")
            name = name.lower()
            if eq and sep == ";" and name in _QUERY_ATTRS:
                raise ConfigError(
                    f"{name}= in {shown} is a query attribute: it goes after '?'",
                    hint=f"e.g. pkcs11:token=T;object=O?{name}=...")
            if not eq or (name not in allowed and not name.startswith("x-")):
                raise ConfigError(
                    f"unknown or malformed attribute {mask_pin(item)!r} in {shown}",
                    hint="RFC 7512: pkcs11:token=T;object=O;type=private"
                         "?module-path=/path/module.so&pin-source=/path/pin")
            if name in into:
                raise ConfigError(f"attribute {name} appears twice in {shown}")
            if _BAD_PERCENT.search(value):
                # unquote_to_bytes would keep a broken escape as literal text: the key
                # or file looked for would not be the one meant
                raise ConfigError(
                    f"attribute {name} in {shown} has an invalid percent-encoding (a '%' "
                    "not followed by two hex digits)",
                    hint="RFC 7512: write a literal '%' as %25, and any byte as %XX")
            into[name] = urllib.parse.unquote_to_bytes(value)
    kind = uri.get("type")
    if kind is not None and kind not in _TYPES:
        raise ConfigError(f"type={kind} in {shown} is not a PKCS#11 object type",
                          hint="use type=private (or leave it out)")
    if kind not in (None, "private"):
        raise ConfigError(f"{shown} names a {kind} object; signing needs the private key",
                          hint="use type=private (or leave it out)")
    if require_key and not (uri.get("object") or uri.id):
        raise ConfigError(f"{shown} names no key (object= or id=)",
                          hint="add object=LABEL or id=%01 to the URI")
    return uri


def _import_pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise ConfigError("pkcs11: keys need the python-pkcs11 package",
                          hint=INSTALL_HINT) from None
    return pkcs11


def module_path(uri: Pkcs11Uri, option: Path | None) -> Path:
    """The module: module-path= in the URI, else --pkcs11-module / TRUSTBOOT_PKCS11_MODULE."""
    given = uri.get("module-path")
    path = Path(given) if given else option
    if path is None:
        raise ConfigError(f"no PKCS#11 module for {uri.text}", hint=MODULE_HINT)
    if not path.is_file():
        raise ConfigError(f"PKCS#11 module {path} does not exist or is not a file",
                          hint=MODULE_HINT)
    return path


# How many blocks hold each module (by path) initialised: python-pkcs11 keeps one lib
# object per path, so the first holder's C_Initialize serves all and the last one out
# calls C_Finalize, whichever thread they run in.
_holders: dict[str, int] = {}
_holders_lock = threading.Lock()


def _trusted_module(path: Path) -> Path:
    """``path`` resolved, if no one but its owner (root or us) can change it: the module
    is code that runs with the PIN in reach, so the file and every directory above it
    must be owned by root or by us and not writable by group or others (a directory
    with the sticky bit, like /tmp, only lets others remove their own files)."""
    real = Path(os.path.realpath(path))
    me = os.geteuid()
    for p in (real, *real.parents):
        try:
            st = os.stat(p)
        except OSError as exc:
            raise ConfigError(f"PKCS#11 module {path}: cannot check {p}: "
                              f"{exc.strerror or exc}", hint=MODULE_HINT) from None
        sticky_dir = p != real and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_uid not in (0, me):
            raise ConfigError(
                f"PKCS#11 module {path}: {p} is owned by uid {st.st_uid}, not by root or "
                "you: its owner could replace the code that is loaded",
                hint="install the module where only root (or you) can write, e.g. /usr/lib")
        if st.st_mode & 0o022 and not sticky_dir and others_can_write(p, st):
            raise ConfigError(
                f"PKCS#11 module {path}: {p} is writable by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): they could replace the code that "
                "is loaded", hint=f"chmod go-w {p}")
    return real


@contextlib.contextmanager
def _initialised(path: Path) -> Iterator[Any]:
    p11 = _import_pkcs11()
    name = os.fspath(_trusted_module(path))  # loaded by the path that was checked
    with _holders_lock:
        try:
            lib = p11.lib(name)  # C_Initialize unless already initialised
        except p11.exceptions.PKCS11Error as exc:
            raise ConfigError(f"cannot load PKCS#11 module {path}: {exc}",
                              hint=MODULE_HINT) from None
        _holders[name] = _holders.get(name, 0) + 1
    try:
        yield lib
    finally:
        with _holders_lock:
            _holders[name] -= 1
            if not _holders[name]:
                del _holders[name]
                with contextlib.suppress(p11.exceptions.PKCS11Error):
                    lib.finalize()


@contextlib.contextmanager
def loaded_module(path: Path) -> Iterator[Any]:
    """The module, initialised for this block; inside a run (trustboot.run) it stays
    initialised until the run ends, so resolving a key, reading its certificate and
    signing with it cost one C_Initialize."""
    p11 = _import_pkcs11()
    with _initialised(path) as lib:
        keep_for_run(f"pkcs11-module:{os.fspath(path)}", lambda: _initialised(path))
        try:
            yield lib
        except p11.exceptions.PKCS11Error as exc:  # anything not mapped to a clearer error
            raise OperationalError(f"PKCS#11 module {path} failed: {type(exc).__name__}",
                                   hint="check the token (present, initialised) and the "
                                        "module") from None


def find_token(lib: Any, uri: Pkcs11Uri) -> Any:
    """The one token the URI's token attributes select."""
    p11 = _import_pkcs11()
    wanted = {"token": uri.get("token"), "serial": uri.get("serial"),
              "manufacturer": uri.get("manufacturer"), "model": uri.get("model")}
    slot_id = uri.get("slot-id")
    found = []
    labels = []
    try:
        slots = lib.get_slots(token_present=True)
        for slot in slots:
            token = slot.get_token()
            have = {"token": token.label, "serial": token.serial.decode(errors="replace").strip(),
                    "manufacturer": token.manufacturer_id, "model": token.model}
            labels.append(token.label)
            if slot_id is not None and str(slot.slot_id) != slot_id:
                continue
            if all(v is None or have[k] == v for k, v in wanted.items()):
                found.append(token)
    except p11.exceptions.PKCS11Error as exc:
        raise OperationalError(f"PKCS#11 module error listing tokens: {type(exc).__name__}",
                               hint="check the module and its configuration") from None
    if not found:
        raise ConfigError(
            f"no token matches {uri.text}",
            hint=(f"tokens present: {', '.join(_shown_label(label) for label in labels)}"
                  if labels else "no token is present: initialise one or plug it in"))
    if len(found) > 1:
        raise ConfigError(f"{len(found)} tokens match {uri.text}",
                          hint="add serial= (or slot-id=) to the URI to choose one")
    return found[0]


def _object_attrs(uri: Pkcs11Uri) -> dict[Any, Any]:
    """The label and CKA_ID the URI names (object=, id=), as a search template."""
    p11 = _import_pkcs11()
    attrs: dict[Any, Any] = {}
    if (label := uri.get("object")) is not None:
        attrs[p11.Attribute.LABEL] = label
    if uri.id is not None:
        attrs[p11.Attribute.ID] = uri.id
    return attrs


def _template(uri: Pkcs11Uri, object_class: Any) -> dict[Any, Any]:
    return {_import_pkcs11().Attribute.CLASS: object_class, **_object_attrs(uri)}


def find_one(session: Any, uri: Pkcs11Uri, object_class: Any, what: str) -> Any:
    objects = list(session.get_objects(_template(uri, object_class)))
    if not objects:
        raise ConfigError(f"no {what} matching {uri.text} in the token",
                          hint="list the token's objects: pkcs11-tool --module M -O "
                               "(or p11tool --list-all); check object= / id=")
    if len(objects) > 1:
        raise ConfigError(f"{len(objects)} {what}s match {uri.text}",
                          hint="add id= (or a more precise object=) to the URI to choose one")
    return objects[0]


def _certificate_from_token(lib: Any, uri: Pkcs11Uri) -> x509.Certificate | None:
    """The certificate object with the key's id/label, if the token holds one."""
    p11 = _import_pkcs11()
    token = find_token(lib, uri)
    with token.open() as session:  # certificates are public objects: no login
        objects = list(session.get_objects(_template(uri, p11.ObjectClass.CERTIFICATE)))
        if not objects:
            return None
        if len(objects) > 1:
            raise ConfigError(f"{len(objects)} certificate objects match {uri.text}",
                              hint="add id= to the URI, or pass the certificate with "
                              "--signing-cert")
        der = bytes(objects[0][p11.Attribute.VALUE])
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise ConfigError(f"the certificate object of {uri.text} is not a readable "
                          "X.509 certificate", hint="pass it with --signing-cert FILE") from None


def _certificate_from_pki(lib: Any, uri: Pkcs11Uri, opts: ResolveOptions
                          ) -> x509.Certificate:
    """The pki's valid code-signing certificate for the token's public key (as issued by
    `trustboot ca issue codesign NAME --pkcs11-key URI`)."""
    hint = ("pass the signing certificate with --signing-cert FILE, or issue one for this key: "
            "trustboot ca issue codesign NAME --pkcs11-key URI")
    from trustboot.ca.store import CertificateAuthority

    pki = opts.pki
    if pki is None or not CertificateAuthority.exists(pki):
        raise ConfigError(f"no certificate for {uri.text}: none in the token, no pki",
                          hint=hint)
    public = _token_public_key(lib, uri)
    ca, _ = opts.open_ca(pki)  # (the one the caller opened, if any)
    revoked = expired = None
    for entry in reversed(ca.entries):  # the newest certificate of the key that is valid
        if entry.profile != "codesign" or entry.load_cert().public_key() != public:
            continue
        if ca.current(entry.name) is entry:
            return entry.load_cert()
        if entry.status == "revoked":
            revoked = revoked or entry
        elif expired is None:
            expired = entry  # expired (or under a retired chain): sign's policy reports it
    if expired is not None:
        return expired.load_cert()
    if revoked is not None:
        raise revoked_error(revoked.name, revoked.serial, f"the CA index in {pki}")
    raise ConfigError(f"no certificate for {uri.text} in the token or in {pki}", hint=hint)


@dataclass
class Pkcs11KeySource(KeySource):
    ref: KeyRef
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    uri: Pkcs11Uri
    module: Path
    ca_status: str | None = None
    secret_kind: SecretKind = "pin"  # noqa: S105 - a kind, not a secret

    @contextlib.contextmanager
    def open(self, secrets: PassphraseSource) -> Iterator[Signer]:
        p11 = _import_pkcs11()
        with token_session(self.uri, self.module, secrets) as session:
            key = find_one(session, self.uri, p11.ObjectClass.PRIVATE_KEY, "private key")
            yield Pkcs11Signer(key, self.certificate, self.chain, self.uri)


@contextlib.contextmanager
def token_session(uri: Pkcs11Uri, module: Path, secrets: PassphraseSource, *,
                  rw: bool = False) -> Iterator[Any]:
    """A session on the URI's token, logged in when the token wants it (one PIN request);
    closed, and the module finalised, when the block ends."""
    p11 = _import_pkcs11()
    errors = p11.exceptions
    with loaded_module(module) as lib:
        token = find_token(lib, uri)
        pin: str | None = None
        if token.flags & p11.TokenFlag.LOGIN_REQUIRED:
            source = uri.get("pin-source")
            raw = (secret_source(source) if source else secrets)(
                f"the PIN of token {token.label!r}")
            # whatever gave it (a library caller too): never sent to the token
            secret_sources.refuse_nul(raw, f"the PIN for token {token.label!r}")
            try:
                pin = raw.decode()
            except UnicodeDecodeError:  # say nothing about the value itself
                raise ConfigError(f"the PIN for token {token.label!r} is not UTF-8",
                                  hint="check the PIN source") from None
        try:
            session = token.open(rw=rw, user_pin=pin)
        except errors.PKCS11Error as exc:
            raise login_error(exc, token.label) from None
        with session:
            yield session


def login_error(exc: Exception, label: str) -> ConfigError | OperationalError:
    """The error to raise for python-pkcs11's exception ``exc`` on logging in to token
    ``label``: a wrong PIN is a configuration error (exit 3), a locked PIN or anything else
    from the token an operational one (exit 1). The PIN itself is never in the message."""
    errors = _import_pkcs11().exceptions
    if isinstance(exc, errors.PinIncorrect):
        return ConfigError(f"wrong PIN for token {label!r}",
                           hint="check the PIN source (--pin-file / --pin-env / "
                                "pin-source=); repeated failures lock the token")
    if isinstance(exc, errors.PinLocked):
        return OperationalError(
            f"the PIN of token {label!r} is locked (too many wrong PINs)",
            hint="reset it with the security officer PIN (e.g. pkcs11-tool "
                 "--init-pin --login --login-type so)")
    if isinstance(exc, errors.PinExpired | errors.PinInvalid | errors.PinLenRange):
        return ConfigError(f"token {label!r} refused the PIN: {type(exc).__name__}",
                           hint="check the PIN")
    return OperationalError(f"cannot log in to token {label!r}: {type(exc).__name__}",
                            hint="check the token and its module")


def _pin_file(source: str) -> Path:
    """The file an RFC 7512 pin-source names (a path or a file: URI). A file: URI naming
    another host is refused, not read from this one: RFC 8089 lets its authority be only
    empty or "localhost" for a local file (no user, no port)."""
    if source.startswith("file:"):
        try:
            parsed = urllib.parse.urlparse(source)
        except ValueError:  # file://[x/...: a broken host in the URI, from argv
            raise ConfigError(f"pin-source {source!r} is not a file: URI or a path",
                              hint="write pin-source=file:/path/to/pin") from None
        if parsed.netloc.lower() not in ("", "localhost"):
            raise ConfigError(
                f"pin-source {source!r} names a file on host {parsed.netloc!r}: only a "
                "local file can hold the PIN",
                hint="write pin-source=file:/path/to/pin (or file:///path, "
                     "file://localhost/path) for a file on this machine")
        if parsed.query or parsed.fragment:
            # a '?' or '#' the user meant as part of the file name: not silently dropped
            raise ConfigError(f"pin-source {source!r} has a query or fragment ('?', '#'), "
                              "which a file: URI of a PIN file has no use for",
                              hint="name the file by its path: pin-source=/path/to/pin")
        source = parsed.path or source[5:]
    return Path(source)


def secret_source(source: str) -> PassphraseSource:
    """RFC 7512 pin-source: a file (path or file: URI) whose first line is the PIN."""
    return secret_sources.from_file(_pin_file(source), "PIN file")


def files_named(text: str) -> list[tuple[Path, str]]:
    """The files a pkcs11: URI names for the run to read (its module-path= and its
    pin-source= file), as (path, what): no output of the run may replace them."""
    uri = parse_uri(text)
    named = []
    if module := uri.get("module-path"):
        named.append((Path(module), "the URI's module-path"))
    if pin := uri.get("pin-source"):
        named.append((_pin_file(pin), "the URI's pin-source"))
    return named


class Pkcs11Signer(CertifiedSigner):
    """Signs host-computed digests with a private key object of an open, logged-in session."""

    def __init__(self, key: Any, certificate: x509.Certificate,
                 chain: Sequence[x509.Certificate], uri: Pkcs11Uri) -> None:
        super().__init__(certificate, chain)
        p11 = _import_pkcs11()
        self._key = key
        key_type = read_attribute(key, p11.Attribute.KEY_TYPE, uri, "private key object")
        expected = p11.KeyType.RSA if self._algorithm == KeyAlgorithm.RSA else p11.KeyType.EC
        if key_type not in (p11.KeyType.RSA, p11.KeyType.EC):
            raise ConfigError(f"the key {uri.text} is a {key_type.name} key; only RSA and "
                              "ECDSA keys can sign for iPXE",
                              hint="use an RSA or EC P-256/P-384 key object")
        if key_type != expected:
            raise self.mismatch(f"{uri.text} ({key_type.name})", _MISMATCH_HINT)
        self._check_pair(uri)

    def _check_pair(self, uri: Pkcs11Uri) -> None:
        """One test signature: the token's key must be the certificate's."""
        from trustboot.cms.certinfo import verify_raw

        digest = os.urandom(32)
        signature = self.sign_digest(digest, "sha256")
        public_key = self._certificate.public_key()
        if not verify_raw(public_key, self._algorithm, "sha256", signature,  # type: ignore[arg-type]
                          digest=digest):
            raise self.mismatch(uri.text, _MISMATCH_HINT)

    def sign_digest(self, digest: bytes, hash_name: str) -> bytes:
        return sign_in_token(self._key, self._algorithm, HashAlgorithm.parse(hash_name),
                             digest)


def sign_in_token(key: Any, algorithm: KeyAlgorithm, hash_alg: HashAlgorithm,
                  digest: bytes) -> bytes:
    """The token signs a host-computed digest: CKM_RSA_PKCS over the DigestInfo, or
    CKM_ECDSA whose raw r||s becomes a DER Ecdsa-Sig-Value."""
    p11 = _import_pkcs11()
    hash_alg.check_digest(digest)
    try:
        if algorithm == KeyAlgorithm.RSA:
            return bytes(key.sign(hash_alg.digest_info(digest),
                                  mechanism=p11.Mechanism.RSA_PKCS))
        raw = bytes(key.sign(digest, mechanism=p11.Mechanism.ECDSA))
    except p11.exceptions.PKCS11Error as exc:
        raise OperationalError(f"the token refused to sign: {type(exc).__name__}",
                               hint="check the key's CKA_SIGN and the token") from None
    from asn1crypto import algos

    der: bytes = algos.DSASignature.from_p1363(raw).dump()
    return der


def resolve(ref: KeyRef, opts: ResolveOptions) -> Pkcs11KeySource:
    """A pkcs11: reference: the token must be present now; the certificate comes from
    --cert or from a certificate object with the key's id/label in the token."""
    uri = parse_uri(ref.value)
    module = module_path(uri, opts.pkcs11_module)
    with loaded_module(module) as lib:
        find_token(lib, uri)  # fail now, before any file is read
        if opts.cert is not None:
            leaf = load_certificates(opts.cert, "certificate")[0]
        else:
            leaf = (_certificate_from_token(lib, uri)
                    or _certificate_from_pki(lib, uri, opts))
    pool = load_certificates(opts.chain, "chain") if opts.chain is not None else []
    return Pkcs11KeySource(ref, leaf, tuple(order_chain(leaf, pool)), uri, module)


def public_key_of(ref: KeyRef, module_option: Path | None) -> Any:
    """The public key of a token's key pair (for the CA to certify it); no login needed
    when the public key object is public, as it is by default."""
    uri = parse_uri(ref.value)
    with loaded_module(module_path(uri, module_option)) as lib:
        return _token_public_key(lib, uri)


def _token_public_key(lib: Any, uri: Pkcs11Uri) -> Any:
    token = find_token(lib, uri)
    with token.open() as session:
        return _public_key_in(session, uri)


def read_attribute(obj: Any, attribute: Any, uri: Pkcs11Uri, what: str) -> Any:
    """An attribute of the token object ``what`` the URI names. A token may lack one or not
    reveal it (CKR_ATTRIBUTE_TYPE_INVALID, _SENSITIVE), and python-pkcs11 raises ValueError
    for a value it has no name for (a vendor's key type): the object is then unusable
    here, which is a ConfigError naming it, not a module failure or a crash."""
    p11 = _import_pkcs11()
    try:
        return obj[attribute]
    except ValueError:
        if attribute == p11.Attribute.KEY_TYPE:
            raise ConfigError(f"the key {uri.text} is of a key type that is not RSA or EC "
                              "(vendor-defined); only RSA and ECDSA keys can sign for iPXE",
                              hint="use RSA or EC P-256") from None
        raise ConfigError(f"the {what} of {uri.text} has an unreadable "
                          f"CKA_{attribute.name}", hint=_ATTRIBUTES_HINT) from None
    except (p11.exceptions.PKCS11Error, KeyError) as exc:
        raise ConfigError(f"the {what} of {uri.text} has no readable CKA_{attribute.name} "
                          f"({type(exc).__name__})", hint=_ATTRIBUTES_HINT) from None


_ATTRIBUTES_HINT = ("inspect it (pkcs11-tool --module M -O, or p11tool --list-all): an RSA "
                    "public key needs CKA_MODULUS and CKA_PUBLIC_EXPONENT, an EC one "
                    "CKA_EC_PARAMS and CKA_EC_POINT, every key CKA_KEY_TYPE; import the key "
                    "pair with them, or generate it in the token")


def _public_key_in(session: Any, uri: Pkcs11Uri) -> Any:
    """The public key object the URI names, as a cryptography public key. Its attributes
    are the token's, and any R/W session can create public objects without logging in: a
    value cryptography refuses is a ConfigError naming the object, never a crash."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    p11 = _import_pkcs11()
    obj = find_one(session, uri, p11.ObjectClass.PUBLIC_KEY, "public key")

    def invalid(kind: str) -> ConfigError:
        return ConfigError(
            f"the public key object of {uri.text} is not a valid {kind} key",
            hint="inspect it (pkcs11-tool --module M -O, or p11tool --list-all); delete the "
                 "object and import the key pair's real public key, or generate a new pair")

    def read(attribute: Any) -> Any:
        return read_attribute(obj, attribute, uri, "public key object")

    key_type = read(p11.Attribute.KEY_TYPE)
    if key_type == p11.KeyType.RSA:
        n = int.from_bytes(bytes(read(p11.Attribute.MODULUS)), "big")
        e = int.from_bytes(bytes(read(p11.Attribute.PUBLIC_EXPONENT)), "big")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise invalid("RSA") from None
    if key_type == p11.KeyType.EC:
        from asn1crypto import core, keys

        params_der = bytes(read(p11.Attribute.EC_PARAMS))
        point_der = bytes(read(p11.Attribute.EC_POINT))
        try:
            params = keys.ECDomainParameters.load(params_der)
            name = params.chosen.native if params.name == "named" else ""
        except ValueError:
            raise invalid("EC") from None
        curves = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
        curve = curves.get(name)
        if curve is None:
            raise ConfigError(f"the key {uri.text} is on a curve iPXE cannot verify",
                              hint="use P-256 or P-384")
        try:
            point = core.OctetString.load(point_der).native
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except (ValueError, TypeError):
            raise invalid("EC") from None
    raise ConfigError(f"the key {uri.text} is a {key_type.name} key; only RSA "
                      "and ECDSA keys can sign for iPXE", hint="use RSA or EC P-256")


def proven_public_key(ref: KeyRef, module_option: Path | None,
                      pins: PassphraseSource) -> Any:
    """The public key of a token's key pair, for the CA to certify, once the token has
    proved it holds the matching private key: the private key object the URI names signs
    a fresh random challenge, checked with the public key object. A URI naming a public key
    object alone (anyone's public key can be imported into a token) is refused, so the CA
    never certifies a key its requester does not have. Logs in (one PIN request)."""
    import hashlib

    from trustboot.cms.certinfo import verify_raw
    from trustboot.keys.signer import key_algorithm

    p11 = _import_pkcs11()
    uri = parse_uri(ref.value)
    with token_session(uri, module_path(uri, module_option), pins) as session:
        public = _public_key_in(session, uri)
        algorithm = key_algorithm(public)
        objects = list(session.get_objects(_template(uri, p11.ObjectClass.PRIVATE_KEY)))
        if not objects:
            raise ConfigError(
                f"the token holds no private key for {uri.text}; refusing to certify a "
                "public key whose private key is not there (proof of possession)",
                hint="name the key pair generated in (or imported into) this token; a "
                     "public key alone cannot be certified")
        if len(objects) > 1:
            raise ConfigError(f"{len(objects)} private keys match {uri.text}",
                              hint="add id= (or a more precise object=) to the URI")
        expected = p11.KeyType.RSA if algorithm == KeyAlgorithm.RSA else p11.KeyType.EC
        private_type = read_attribute(objects[0], p11.Attribute.KEY_TYPE, uri,
                                      "private key object")
        if private_type != expected:
            raise ConfigError(
                f"the private key {uri.text} is a {private_type.name} key but its "
                "public key object is not; refusing to certify it (proof of possession)",
                hint="fix object=/id= so that both objects belong to one key pair")
        challenge = hashlib.sha256(b"trustboot proof of possession\0" + os.urandom(32)
                                   ).digest()
        signature = sign_in_token(objects[0], algorithm, HashAlgorithm.SHA256, challenge)
    if not verify_raw(public, algorithm, "sha256", signature, digest=challenge):
        raise ConfigError(
            f"the private key {uri.text} does not match its public key object; refusing "
            "to certify it (proof of possession failed)",
            hint="fix object=/id= so that both objects belong to one key pair")
    return public


# ---- CA keys that live in a token ---------------------------------------------------------
# cryptography's certificate and CRL builders sign through the private key's ``sign``
# method, so an object implementing its private key interface with a token behind it lets
# the CA sign certificates and CRLs in the token without another code path.

def _digest(data: bytes, algorithm: Any) -> tuple[HashAlgorithm, bytes]:
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    if isinstance(algorithm, Prehashed):
        sizes = {h.digest_size: h for h in HashAlgorithm}  # Prehashed hides its algorithm
        if algorithm.digest_size not in sizes:
            raise ValueError("unsupported prehashed digest")
        return sizes[algorithm.digest_size], bytes(data)
    hash_alg = HashAlgorithm.parse(algorithm.name)
    return hash_alg, hashlib.new(hash_alg.value, bytes(data)).digest()


class _TokenKey:
    """Signs through a fresh session per operation (a CA signs one or two things per run);
    the PIN is asked for once and kept for this object's life only."""

    def __init__(self, ref: str, module: Path, secrets: PassphraseSource, public: Any) -> None:
        self.ref = ref
        self._uri = parse_uri(ref)
        self._module = module
        self._pin: bytes | None = None
        self._secrets = secrets
        self._public = public

    def _pin_once(self, what: str) -> bytes:
        if self._pin is None:
            self._pin = self._secrets(what)
        return self._pin

    def _token_sign(self, algorithm: KeyAlgorithm, hash_alg: HashAlgorithm,
                    digest: bytes) -> bytes:
        """The token's signature, checked with the public key before anyone uses it: the
        private key object under the URI's label and id is whatever the token holds now
        (replaced, or another pair's), and a certificate, CRL or .auth file signed by it
        would be written and fail only where it is used."""
        from trustboot.cms.certinfo import verify_raw

        p11 = _import_pkcs11()
        with token_session(self._uri, self._module, self._pin_once) as session:
            key = find_one(session, self._uri, p11.ObjectClass.PRIVATE_KEY, "private key")
            signature = sign_in_token(key, algorithm, hash_alg, digest)
        if not verify_raw(self._public, algorithm.value, hash_alg.value, signature,
                          digest=digest):
            raise VerificationError(
                f"the token key {self._uri.text} made a signature that does not verify with "
                "its public key; nothing was signed with it",
                rule="token-signature", subject=self._uri.text,
                hint="the token's private key object under this label and id is not the "
                     "pair of its public key (replaced?): list them (pkcs11-tool --module M "
                     "-O) and restore the original key pair")
        return signature

    def public_key(self) -> Any:
        return self._public

    def private_numbers(self) -> Any:
        raise ConfigError(f"the key {self._uri.text} is in a token and cannot be exported")

    def private_bytes(self, *_args: Any) -> bytes:
        raise ConfigError(f"the key {self._uri.text} is in a token and cannot be exported")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, _memo: Any) -> Any:
        return self


def token_private_key(ref: str, module: Path, secrets: PassphraseSource, *,
                      certificate: x509.Certificate | None = None,
                      what: str = "the certificate") -> Any:
    """A cryptography private key object whose signing happens in the token, each of its
    signatures checked with the token's public key. With ``certificate`` (``what`` names
    it), before anything is signed: the token's public key must be that certificate's
    (ConfigError), and the private key must sign a challenge that verifies with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    uri = parse_uri(ref)
    with loaded_module(module) as lib:
        public = _token_public_key(lib, uri)
    if certificate is not None:
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if public.public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
            label = uri.get("object")
            raise ConfigError(
                f"the key {uri.text}{f' (label {label!r})' if label else ''} in the token is "
                f"not the key of {what}; refusing to sign with it",
                hint="the token's key pair under this label and id was replaced or belongs "
                     "to something else: restore the original key pair to the token, or "
                     "fix the pkcs11 references in the pki's config")

    if isinstance(public, rsa.RSAPublicKey):
        class TokenRSAKey(_TokenKey, rsa.RSAPrivateKey):
            @property
            def key_size(self) -> int:
                return int(public.key_size)

            def sign(self, data: Any, pad: Any, algorithm: Any) -> bytes:
                if not isinstance(pad, padding.PKCS1v15):
                    raise ValueError("the token key signs with PKCS#1 v1.5 only")
                hash_alg, digest = _digest(data, algorithm)
                return self._token_sign(KeyAlgorithm.RSA, hash_alg, digest)

            def decrypt(self, *_args: Any) -> bytes:
                raise ValueError("the token key is for signing only")

        return _checked(TokenRSAKey(ref, module, secrets, public), KeyAlgorithm.RSA,
                        certificate)

    class TokenECKey(_TokenKey, ec.EllipticCurvePrivateKey):
        @property
        def curve(self) -> ec.EllipticCurve:
            return public.curve  # type: ignore[no-any-return]

        @property
        def key_size(self) -> int:
            return int(public.curve.key_size)

        def sign(self, data: Any, signature_algorithm: Any) -> bytes:
            hash_alg, digest = _digest(data, signature_algorithm.algorithm)
            return self._token_sign(KeyAlgorithm.ECDSA, hash_alg, digest)

        def exchange(self, *_args: Any) -> bytes:
            raise ValueError("the token key is for signing only")

    return _checked(TokenECKey(ref, module, secrets, public), KeyAlgorithm.ECDSA,
                    certificate)


def _checked(key: _TokenKey, algorithm: KeyAlgorithm,
             certificate: x509.Certificate | None) -> _TokenKey:
    """With a certificate to sign under: the private key object proves now, before the
    caller commits anything, that it is the pair of the public key (a random challenge,
    checked by _token_sign), not only when the first real signature is made."""
    if certificate is not None:
        import hashlib

        challenge = hashlib.sha256(b"trustboot token key check\0" + os.urandom(32)).digest()
        key._token_sign(algorithm, HashAlgorithm.SHA256, challenge)
    return key


def generation_token(text: str, module_option: Path | None,
                     option: str = "--pkcs11") -> tuple[str, Path]:
    """The (token URI, module) keys are generated in: the URI names a token only; trustboot
    names the keys, and the PIN comes from the passphrase options, never the URI."""
    uri = parse_uri(text, require_key=False)
    if uri.get("object") or uri.id:
        raise ConfigError(f"{option} {uri.text}: name the token only (token=, serial=)",
                          hint="trustboot names the keys it generates; give the PIN "
                               "with --passphrase-file/--passphrase-env")
    # Absolute: the path is stored (CA index, secureboot.json) and dlopen()ed later, from
    # whatever directory that run starts in.
    return text, module_path(uri, module_option).resolve()


def destroy_generated(token_ref: str, module: Path, secrets: PassphraseSource,
                      refs: Sequence[str], *, best_effort: bool = True) -> bool:
    """Remove the key pairs a failed run just generated, each named by the URI
    :func:`generate_key_pair` returned: its label and the random CKA_ID chosen for it,
    never the label alone, which a pair another run made meanwhile may share. Best
    effort (the run's own error is what the user needs to see): False when the token
    could not be used; with ``best_effort=False`` its error is raised instead."""
    p11 = _import_pkcs11()
    uri = parse_uri(token_ref, require_key=False)
    failures = (p11.exceptions.PKCS11Error, ConfigError, OperationalError)
    try:
        with token_session(uri, module_path(uri, module), secrets, rw=True) as session:
            for ref in refs:
                made = parse_uri(ref)
                if not made.get("object") or not made.id:
                    continue  # not one of generate_key_pair's: nothing to tell it apart by
                for obj in list(session.get_objects(_object_attrs(made))):
                    obj.destroy()
    except failures:
        if not best_effort:
            raise
        return False
    return True


def _refuse_raced_label(uri: Pkcs11Uri, module: Path, secrets: PassphraseSource,
                        label: str, key_id: bytes) -> None:
    """After generating: a run on another CA home may have passed the same label check at
    the same moment, and the label would then name two pairs. Ours is removed (by its
    CKA_ID, never theirs) and the run refused, as if the check had seen theirs. Looked at
    in a new session: a token may show a session only the objects other processes made
    before the module was loaded (SoftHSM2 does). When that session cannot be opened, the
    pair stays: the caller's next use of the token fails too, and removes it."""
    p11 = _import_pkcs11()
    attr = p11.Attribute
    raced = False
    with contextlib.suppress(p11.exceptions.PKCS11Error, ConfigError, OperationalError), \
            token_session(uri, module_path(uri, module), secrets, rw=True) as session:
        raced = any(bytes(obj[attr.ID]) != key_id
                    for obj in session.get_objects({attr.LABEL: label}))
        if raced:
            for obj in list(session.get_objects({attr.LABEL: label, attr.ID: key_id})):
                obj.destroy()
    if raced:
        raise ConfigError(f"token already holds objects labelled {label!r} (made by another "
                          "run at the same moment)",
                          hint="use another token, or remove them after checking that no "
                               "CA uses them")


def generated_ref(token_ref: str, label: str, key_id: bytes) -> str:
    """The URI :func:`generate_key_pair` returns for the pair it makes with ``label`` and
    ``key_id``: known before generating, so a caller can record it first."""
    ident = "".join(f"%{b:02x}" for b in key_id)
    return f"{token_ref.partition('?')[0]};object={label};id={ident}"


def _removal_hint(session: Any, module: Path, objects: Sequence[Any]) -> str:
    """The commands that remove exactly ``objects`` (by class, label and CKA_ID), to run
    once it is certain that nothing uses them."""
    import shlex

    p11 = _import_pkcs11()
    types = {p11.ObjectClass.PRIVATE_KEY: "privkey", p11.ObjectClass.PUBLIC_KEY: "pubkey",
             p11.ObjectClass.CERTIFICATE: "cert", p11.ObjectClass.SECRET_KEY: "secrkey",
             p11.ObjectClass.DATA: "data"}
    token = shlex.quote(session.token.label)
    commands = []
    for obj in objects:
        label = shlex.quote(str(_shown(obj, p11.Attribute.LABEL, "")))
        key_id = bytes(_shown(obj, p11.Attribute.ID, b"")).hex()
        kind = types.get(_shown(obj, p11.Attribute.CLASS, None), "data")
        commands.append(f"pkcs11-tool --module {shlex.quote(os.fspath(module))} --token-label "
                        f"{token} --login --delete-object --type {kind} --label {label}"
                        + (f" --id {key_id}" if key_id else ""))
    return ("check that no CA or key set uses them (they may be another CA's keys), then "
            "remove them: " + "; ".join(dict.fromkeys(commands)) + "; or use another token")


def _shown(obj: Any, attribute: Any, default: Any) -> Any:
    """An attribute for a message; ``default`` when the object has none (a data object
    has no CKA_ID)."""
    try:
        return obj[attribute]
    except (_import_pkcs11().exceptions.PKCS11Error, KeyError, ValueError):
        return default


def _described(objects: Sequence[Any]) -> str:
    p11 = _import_pkcs11()
    described = []
    for obj in objects:
        # (python-pkcs11 gives a data object no object_class: read CKA_CLASS itself)
        kind = _shown(obj, p11.Attribute.CLASS, None)
        name = kind.name.lower().replace("_", " ") if kind is not None else "object"
        described.append(f"{name} id "
                         f"{bytes(_shown(obj, p11.Attribute.ID, b'')).hex() or '(none)'}")
    return ", ".join(described)


def generate_key_pair(token_ref: str, module: Path, secrets: PassphraseSource, *,
                      label: str, kind: str, size: int, key_id: bytes | None = None) -> str:
    """Generate a non-extractable, sensitive signing key pair in the token; returns the
    URI naming it. Refuses when the token already holds an object with that label, naming
    those objects and the commands that would remove them. ``key_id``: the CKA_ID (random
    8 bytes when not given)."""
    p11 = _import_pkcs11()
    # the label is a path attribute: it goes before the query (module-path=, pin-source=)
    path_part, query_sep, query = token_ref.partition("?")
    uri = parse_uri(f"{path_part};object={label}{query_sep}{query}"
                    if "object=" not in token_ref else token_ref)
    # _refuse_raced_label logs in again: the PIN is asked for once
    secrets = secret_sources.asked_once(secrets)
    attr = p11.Attribute
    private = {attr.TOKEN: True, attr.PRIVATE: True, attr.SENSITIVE: True,
               attr.EXTRACTABLE: False, attr.SIGN: True, attr.DECRYPT: False,
               attr.UNWRAP: False, attr.DERIVE: False}
    public = {attr.TOKEN: True, attr.VERIFY: True, attr.ENCRYPT: False, attr.WRAP: False}
    with token_session(uri, module_path(uri, module), secrets, rw=True) as session:
        existing = list(session.get_objects({attr.LABEL: label}))
        if existing:
            raise ConfigError(f"token already holds objects labelled {label!r}: "
                              f"{_described(existing)}",
                              hint=_removal_hint(session, module_path(uri, module), existing))
        key_id = key_id if key_id is not None else os.urandom(8)
        try:
            if kind == "rsa":
                session.generate_keypair(p11.KeyType.RSA, size, id=key_id, label=label,
                                         store=True, public_template=public,
                                         private_template=private)
            else:
                from pkcs11.util.ec import encode_named_curve_parameters

                curve = {256: "secp256r1", 384: "secp384r1"}[size]
                params = session.create_domain_parameters(
                    p11.KeyType.EC, {attr.EC_PARAMS: encode_named_curve_parameters(curve)},
                    local=True)
                params.generate_keypair(id=key_id, label=label, store=True,
                                        public_template=public, private_template=private)
        except p11.exceptions.PKCS11Error as exc:
            raise OperationalError(f"the token could not generate a {kind}-{size} key: "
                                   f"{type(exc).__name__}",
                                   hint="check that the token supports this key type") from None
    _refuse_raced_label(uri, module, secrets, label, key_id)
    return generated_ref(token_ref, label, key_id)
