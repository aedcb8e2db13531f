"""Certificate profiles: exactly the extensions iPXE needs and understands.

iPXE rejects a whole chain on a critical extension it does not implement
(nameConstraints, certificatePolicies, ...), and an OCSP URL in AIA makes it demand an
OCSP answer at boot. So every profile uses only basicConstraints, keyUsage,
extendedKeyUsage, subjectAltName, SKI/AKI (and AIA/CRL DP only when configured).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from trustboot.errors import ConfigError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# iPXE checks every certificate against the client's clock with 12.5 h of slack; client
# clocks lag (no RTC battery, NTP not yet run), so notBefore goes back a full day.
BACKDATE = dt.timedelta(days=1)

LEAF_PROFILES = ("codesign", "server", "client")


@dataclass(frozen=True)
class KeySpec:
    kind: str  # "rsa" or "ec"
    size: int  # RSA modulus bits, or curve bits

    @property
    def label(self) -> str:
        return f"rsa-{self.size}" if self.kind == "rsa" else f"ec-p{self.size}"

    def generate(self) -> PrivateKey:
        if self.kind == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=self.size)
        curve: ec.EllipticCurve = ec.SECP256R1() if self.size == 256 else ec.SECP384R1()
        return ec.generate_private_key(curve)


CA_KEY_TYPES = ("rsa-3072", "rsa-4096", "ec-p256", "ec-p384")
LEAF_KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384")


def parse_key_type(value: str, *, for_ca: bool) -> KeySpec:
    allowed = CA_KEY_TYPES if for_ca else LEAF_KEY_TYPES
    v = value.strip().lower()
    if v not in allowed:
        m = re.fullmatch(r"rsa-?(\d+)", v)
        if m and int(m.group(1)) < (3072 if for_ca else 2048):
            raise ConfigError(
                f"key type {value!r} is too weak for a {'CA' if for_ca else 'leaf'} key",
                hint=f"use one of {', '.join(allowed)}",
            )
        raise ConfigError(
            f"unknown key type {value!r}", hint=f"use one of {', '.join(allowed)}"
        )
    if v.startswith("rsa-"):
        return KeySpec("rsa", int(v[4:]))
    return KeySpec("ec", int(v[4:]))


def key_spec_of(public_key: object) -> KeySpec:
    if isinstance(public_key, rsa.RSAPublicKey):
        return KeySpec("rsa", public_key.key_size)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ("secp256r1", "secp384r1"):
            raise ConfigError(
                f"curve {public_key.curve.name} is not supported by iPXE",
                hint="use P-256 or P-384",
            )
        return KeySpec("ec", public_key.curve.key_size)
    kind = type(public_key).__name__.removeprefix("_").removesuffix("PublicKey")
    raise ConfigError(f"{kind or 'such'} keys cannot be certified for iPXE",
                      hint="iPXE verifies RSA (2048 bits or more) and ECDSA P-256/P-384 keys: "
                           "make the key as one of those")


def check_public_key(public_key: object, *, for_ca: bool) -> KeySpec:
    """The same strength rules for keys that arrive in a CSR."""
    spec = key_spec_of(public_key)
    parse_key_type(spec.label, for_ca=for_ca)
    return spec


def ecdsa_warning(spec: KeySpec) -> str | None:
    if spec.kind == "ec":
        return (
            f"{spec.label}: iPXE before 2.0.0 cannot verify ECDSA signatures or chains; "
            "use rsa-3072/rsa-4096 if any client may run an older iPXE"
        )
    return None


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_name(name: str) -> str:
    """Names become file names under issued/ and private/: no paths, no surprises."""
    if not _NAME_RE.fullmatch(name) or name in (".", "..") or ".." in name:
        raise ConfigError(
            f"invalid certificate name {name!r}",
            hint="use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    return name


def parse_san(value: str) -> x509.GeneralName:
    """A DNS name (LDH labels, leftmost-label wildcard only) or an IP address."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
            # A certificate holds the bare address; the scope (any text, control
            # characters included) would only live on in the index and the views.
            raise ConfigError(
                f"IP address {value!r} has a scope id (the part after %): a certificate "
                "holds the bare address only",
                hint=f"give the address without it: {value.split('%', 1)[0]}")
        return x509.IPAddress(ip)
    name = value.lower()
    labels = name.split(".")
    bad = (
        not name
        or len(name) > 253
        or (len(labels) < 2 and not _LABEL_RE.fullmatch(name))
        or any(not (_LABEL_RE.fullmatch(lbl) or (i == 0 and lbl == "*")) for i, lbl in
               enumerate(labels))
        or (labels[0] == "*" and len(labels) < 3)
        # An all-numeric last label is a mistyped IP address, not a host name.
        or labels[-1].isdigit()
    )
    if bad:
        raise ConfigError(
            f"invalid DNS name or IP address {value!r}",
            hint="give host names like boot.example.net, a leading '*.' wildcard, or an IP "
            "address",
        )
    return x509.DNSName(name)


@dataclass(frozen=True)
class CAOptions:
    """Settings chosen at `ca init` and applied to every certificate the CA issues."""

    organization: str | None = None
    crl_url: str | None = None
    ocsp_url: str | None = None


def _name(common_name: str, opts: CAOptions) -> x509.Name:
    attrs = [x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]
    if opts.organization:
        attrs.insert(0, x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, opts.organization))
    return x509.Name(attrs)


def _ku(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def build_certificate(
    *,
    profile: str,
    subject_cn: str,
    public_key: PublicKey,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    serial: int,
    now: dt.datetime,
    days: int,
    opts: CAOptions,
    sans: list[x509.GeneralName] | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """Build and sign one certificate of ``profile`` (root, issuing, codesign, server, client).
    ``not_after``, when given, replaces ``now + days`` (a renewal that keeps an end)."""
    not_before = now - BACKDATE
    not_after = not_after if not_after is not None else now + dt.timedelta(days=days)
    if issuer_cert is not None and now >= issuer_cert.not_valid_after_utc:
        # Clamped to it, the certificate would be born expired (or, past a day, have its
        # end before its start): nothing it signs would verify.
        raise ConfigError(
            f"the CA certificate {issuer_cert.subject.rfc4514_string()} expired on "
            f"{issuer_cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC: it cannot issue",
            hint="give the CA a new certificate first: `trustboot ca rotate issuing` for an "
            "issuing CA, a root rotation (`trustboot ca rotate root begin`) for the root")
    if issuer_cert is not None and not_after > issuer_cert.not_valid_after_utc:
        # A chain is only as valid as its shortest link: iPXE would reject it after that.
        not_after = issuer_cert.not_valid_after_utc
    subject = _name(subject_cn, opts)
    issuer_name = subject if issuer_cert is None else issuer_cert.subject
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer_cert is None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
    else:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )

    if profile == "root":
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        b = b.add_extension(_ku(cert_sign=True), critical=True)
    elif profile == "issuing":
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        b = b.add_extension(_ku(cert_sign=True), critical=True)
    elif profile == "codesign":
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(_ku(digital_signature=True), critical=True)
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    elif profile in ("server", "client"):
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(
            _ku(
                digital_signature=True,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            ),
            critical=True,
        )
        eku = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if profile == "server"
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    else:
        raise ConfigError(
            f"unknown profile {profile!r}", hint=f"use one of {', '.join(LEAF_PROFILES)}"
        )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if issuer_cert is not None:
        if opts.crl_url:
            b = b.add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier(opts.crl_url)],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        )
                    ]
                ),
                critical=False,
            )
        if opts.ocsp_url:
            b = b.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(opts.ocsp_url),
                        )
                    ]
                ),
                critical=False,
            )
    algo = hash_for(issuer_key)
    return b.sign(issuer_key, algo)


def hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()
