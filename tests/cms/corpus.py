"""Generate the corpus of good and bad signatures (and the bogus certificates behind them).

Run as a script to look at it: ``python -m tests.cms.corpus OUTDIR``. Every blob is made
here from scratch: certificates with cryptography's builder (including the ones a sane CA
would never issue), signatures with trustboot's own CMS builder or by hand for the
malformed kinds, and the damage (flipped bytes, truncation) applied programmatically.

Each case names its expected verdict and, when bad, the rule trustboot must report. The
same corpus is judged by a real iPXE in test_ipxe_corpus.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asn1crypto import cms as acms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustboot.cms import _asn1
from trustboot.cms.sign import build_signed_data, sign_digest
from trustboot.cms.verify import TrustAnchor, fingerprint
from trustboot.keys.signer import KeySigner

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class Case:
    name: str
    expect_ok: bool
    rule: str | None = None  # the rule trustboot must name when expect_ok is False
    signer: str | None = None  # --signer
    at_offset_s: int = 0  # verify at corpus time + this
    isolate: bool = False  # needs a fresh iPXE: its certificate store remembers certificates
    ipxe: bool = True  # also judged by a real iPXE build
    ipxe_version: str = "2.0.0"
    # The verdict when the root certificate is also built in with CERT= (trustboot's
    # iPXE builds do that), if it differs from expect_ok.
    ok_with_builtin_root: bool | None = None
    # The verdict of a BIOS build (no IPv6) if it differs from expect_ok (EFI or unknown).
    bios_ok: bool | None = None
    note: str = ""

    @property
    def expect_ok_with_builtin_root(self) -> bool:
        return self.expect_ok if self.ok_with_builtin_root is None else self.ok_with_builtin_root

    @property
    def image(self) -> str:
        return f"{self.name}.img"

    @property
    def sig(self) -> str:
        return f"{self.name}.img.sig"


@dataclass
class Corpus:
    directory: Path
    now: dt.datetime
    root: Path  # the trusted root (PEM)
    other_root: Path  # a root nobody trusts
    cases: list[Case] = field(default_factory=list)

    def at(self, case: Case) -> dt.datetime:
        return self.now + dt.timedelta(seconds=case.at_offset_s)

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)

    @functools.cached_property
    def root_der(self) -> bytes:
        return der(x509.load_pem_x509_certificate(self.root.read_bytes()))

    @functools.cached_property
    def anchor(self) -> TrustAnchor:
        """The corpus root as iPXE's TRUST= holds it (with its bytes, for explanations)."""
        return TrustAnchor(fingerprint(self.root_der), self.root_der, "root")


# --- certificates ------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustboot corpus"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_serial = [0x1000]


def make_cert(
    cn: str, key: Key, issuer: tuple[x509.Certificate, Key] | None, *,
    not_before: dt.datetime, not_after: dt.datetime, ca: bool | None = None,
    path_len: int | None = None, key_usage: set[str] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None, san: list[x509.GeneralName] | None = None,
    extra: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
) -> x509.Certificate:
    """A certificate exactly as asked, sane or not (None leaves an extension out)."""
    _serial[0] += 1
    issuer_name = issuer[0].subject if issuer else _name(cn)
    signing_key = issuer[1] if issuer else key
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(_serial[0])
               .not_valid_before(not_before).not_valid_after(not_after))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_len),
                                        critical=True)
    if key_usage is not None:
        flags = {f: f in key_usage for f in (
            "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign")}
        builder = builder.add_extension(
            x509.KeyUsage(**flags, encipher_only=False, decipher_only=False), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)



# --- raw DER, for what no sane builder writes ------------------------------------------------
# iPXE's parser is stricter than asn1crypto/cryptography in some places and more lenient in
# others; these build the exact bytes of each case (and re-sign what they change).

def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        head = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + head + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def oid(dotted: str) -> bytes:
    return tlv(0x06, _asn1.oid_bytes(dotted))


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def children(der_bytes: bytes) -> list[bytes]:
    """The TLVs inside a constructed object."""
    c = _asn1.Cursor(der_bytes)
    c.enter(_asn1.ANY)
    out = []
    while c.len:
        out.append(c.tlv())
        c.skip(_asn1.ANY)
    return out


def utc_time(when: dt.datetime, fmt: str = "%y%m%d%H%M%SZ") -> bytes:
    return tlv(0x17, when.strftime(fmt).encode())


def gen_time(when: dt.datetime, fmt: str = "%Y%m%d%H%M%SZ") -> bytes:
    return tlv(0x18, when.strftime(fmt).encode())


def extension(oid_text: str, value: bytes, critical: bytes | None = None) -> bytes:
    """critical: the raw BOOLEAN TLV (None leaves it out)."""
    return seq(oid(oid_text), critical or b"", tlv(0x04, value))


OID_SHA256_RSA = "1.2.840.113549.1.1.11"
CRITICAL = tlv(0x01, b"\xff")


def _raw_sign(key: Key, data: bytes, hash_name: str = "sha256", *,
              prehashed: bool = False) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    algo = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[
        hash_name]
    chosen = Prehashed(algo) if prehashed else algo
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), chosen)
    return key.sign(data, ec.ECDSA(chosen))


def forge(template: x509.Certificate, issuer_key: Key, *,
          edit: dict[int, bytes] | None = None, outer_alg: bytes | None = None,
          unused_bits: int = 0, trailing: bytes = b"") -> bytes:
    """``template`` re-encoded with tbsCertificate fields replaced (by index: 0 version,
    1 serial, 2 signature, 3 issuer, 4 validity, 5 subject, 6 spki, 7 extensions; the
    bytes b"" drop a field) and signed again by ``issuer_key`` (RSA, SHA-256)."""
    fields = children(template.tbs_certificate_bytes)
    for index, value in (edit or {}).items():
        fields[index] = value
    tbs = seq(*fields)
    signature = _raw_sign(issuer_key, tbs)
    return seq(tbs, outer_alg if outer_alg is not None else fields[2],
               tlv(0x03, bytes([unused_bits]) + signature), trailing)


def _issuer_and_serial(cert_der: bytes) -> tuple[bytes, bytes]:
    fields = children(children(cert_der)[0])
    if fields[0][:1] == b"\xa0":
        fields = fields[1:]
    return fields[2], fields[0]


def raw_signed_data(
    cert_ders: list[bytes], signers: list[bytes], *, sd_version: int = 1,
    digest_algs: bytes | None = None, crls: bytes = b"", encap: bytes | None = None,
) -> bytes:
    """ContentInfo(SignedData) from raw SignerInfo TLVs."""
    algs = digest_algs if digest_algs is not None else tlv(0x31, seq(oid("2.16.840.1.101.3.4.2.1"),
                                                                      b"\x05\x00"))
    encap = encap if encap is not None else seq(oid("1.2.840.113549.1.7.1"))
    sd = seq(integer(sd_version), algs, encap,
             tlv(0xA0, b"".join(cert_ders)), crls, tlv(0x31, b"".join(signers)))
    return seq(oid("1.2.840.113549.1.7.2"), tlv(0xA0, sd))


def raw_signer_info(
    cert_der: bytes, signature: bytes, *, version: int = 1,
    digest_alg: bytes | None = None, sig_alg: bytes | None = None,
    signed_attrs: bytes = b"", unsigned_attrs: bytes = b"",
) -> bytes:
    issuer, serial = _issuer_and_serial(cert_der)
    return seq(integer(version), seq(issuer, serial),
               digest_alg or seq(oid("2.16.840.1.101.3.4.2.1"), b"\x05\x00"), signed_attrs,
               sig_alg or seq(oid("1.2.840.113549.1.1.1"), b"\x05\x00"),
               tlv(0x04, signature), unsigned_attrs)


# --- signatures --------------------------------------------------------------------------

def sign(image: bytes, leaf: x509.Certificate, key: Key, chain: list[x509.Certificate],
         hash_name: str = "sha256") -> bytes:
    """trustboot's own signing path, minus the policy checks (bogus certs welcome)."""
    signer = KeySigner(key, leaf, chain)
    return sign_digest(signer, hashlib.new(hash_name, image).digest(), hash_name)


def sign_with_attributes(image: bytes, leaf: x509.Certificate, key: rsa.RSAPrivateKey,
                         chain: list[x509.Certificate]) -> bytes:
    """What `openssl cms -sign` makes without -noattr: valid CMS that iPXE cannot verify."""
    from cryptography.hazmat.primitives.asymmetric import padding

    attrs = acms.CMSAttributes([
        {"type": "content_type", "values": ["data"]},
        {"type": "message_digest", "values": [hashlib.sha256(image).digest()]},
    ])
    signature = key.sign(attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
    plain = acms.ContentInfo.load(build_signed_data(der(leaf), [der(c) for c in chain],
                                                    "sha256", "rsa", b"\0"))
    si = plain["content"]["signer_infos"][0]
    new_si = acms.SignerInfo({
        "version": "v1", "sid": si["sid"], "digest_algorithm": si["digest_algorithm"],
        "signed_attrs": attrs, "signature_algorithm": si["signature_algorithm"],
        "signature": signature,
    })
    return _replace_signer_infos(plain, [new_si])


def sign_with_ski(image: bytes, leaf: x509.Certificate, key: Key,
                  chain: list[x509.Certificate]) -> bytes:
    """The signer named by subject key identifier (openssl cms -keyid)."""
    good = acms.ContentInfo.load(sign(image, leaf, key, chain))
    si = good["content"]["signer_infos"][0]
    ski = x509.SubjectKeyIdentifier.from_public_key(leaf.public_key()).digest
    new_si = acms.SignerInfo({
        "version": "v3", "sid": acms.SignerIdentifier({"subject_key_identifier": ski}),
        "digest_algorithm": si["digest_algorithm"],
        "signature_algorithm": si["signature_algorithm"], "signature": si["signature"],
    })
    return _replace_signer_infos(good, [new_si])


def _replace_signer_infos(info: acms.ContentInfo, signer_infos: list[acms.SignerInfo]) -> bytes:
    sd = info["content"]
    new_sd = acms.SignedData({
        "version": "v3" if any(s["version"].native == "v3" for s in signer_infos) else "v1",
        "digest_algorithms": sd["digest_algorithms"],
        "encap_content_info": {"content_type": "data"},
        "certificates": sd["certificates"],
        "signer_infos": signer_infos,
    })
    return bytes(acms.ContentInfo({"content_type": "signed_data", "content": new_sd}).dump())


def without_certificates(sig: bytes, keep: list[bytes]) -> bytes:
    """Rebuild ``sig`` keeping only the certificates in ``keep`` (DER)."""
    info = acms.ContentInfo.load(sig)
    sd = info["content"]
    certs = [c for c in sd["certificates"] if c.chosen.dump() in keep]
    fields = {
        "version": sd["version"], "digest_algorithms": sd["digest_algorithms"],
        "encap_content_info": {"content_type": "data"}, "signer_infos": sd["signer_infos"],
    }
    if keep:
        fields["certificates"] = certs
    return bytes(acms.ContentInfo({"content_type": "signed_data",
                                   "content": acms.SignedData(fields)}).dump())


def combine(first: bytes, second: bytes) -> bytes:
    """One SignedData with the signers and certificates of both signatures."""
    a, b = acms.ContentInfo.load(first)["content"], acms.ContentInfo.load(second)["content"]
    certs, seen = [], set()
    for choice in [*a["certificates"], *b["certificates"]]:
        raw = choice.chosen.dump()
        if raw not in seen:
            seen.add(raw)
            certs.append(choice.chosen)
    algs = {x["algorithm"].dotted: x for x in [*a["digest_algorithms"], *b["digest_algorithms"]]}
    sd = acms.SignedData({
        "version": "v1", "digest_algorithms": list(algs.values()),
        "encap_content_info": {"content_type": "data"}, "certificates": certs,
        "signer_infos": [*a["signer_infos"], *b["signer_infos"]],
    })
    return bytes(acms.ContentInfo({"content_type": "signed_data", "content": sd}).dump())


def flip_signature_value(sig: bytes) -> bytes:
    """Flip a bit inside the SignerInfo's signature value (the last bytes of the object)."""
    data = bytearray(sig)
    data[-5] ^= 0x01
    return bytes(data)


# --- the corpus --------------------------------------------------------------------------

def generate(directory: Path, now: dt.datetime | None = None) -> Corpus:
    directory.mkdir(parents=True, exist_ok=True)
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    long_ago = now - 30 * DAY
    far = now + 3650 * DAY

    def rsa_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    root_key, int_key, leaf_key, other_key = rsa_key(), rsa_key(), rsa_key(), rsa_key()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ca_ku = {"key_cert_sign", "crl_sign"}
    leaf_ku = {"digital_signature"}
    cs = [ExtendedKeyUsageOID.CODE_SIGNING]

    root = make_cert("Corpus Root CA", root_key, None, not_before=long_ago, not_after=far,
                     ca=True, key_usage=ca_ku)
    inter = make_cert("Corpus Issuing CA", int_key, (root, root_key), not_before=long_ago,
                      not_after=far - DAY, ca=True, path_len=0, key_usage=ca_ku)
    chain = [inter, root]

    def leaf(cn: str, *, key: Key = leaf_key, issuer: tuple[x509.Certificate, Key] = (
            inter, int_key), nb: dt.datetime = long_ago, na: dt.datetime | None = None,
             ku: set[str] | None = leaf_ku, eku: list[x509.ObjectIdentifier] | None = cs,
             san: list[x509.GeneralName] | None = None) -> x509.Certificate:
        return make_cert(cn, key, issuer, not_before=nb, not_after=na or now + 730 * DAY,
                         ca=False, key_usage=ku, eku=eku, san=san)

    signer = leaf("boot-signer.example.org", san=[
        x509.DNSName("signer.example.org"), x509.DNSName("*.boot.example.org")])
    other_root = make_cert("Untrusted Root CA", other_key, None, not_before=long_ago,
                           not_after=far, ca=True, key_usage=ca_ku)

    cases: list[Case] = []
    blobs: dict[str, tuple[bytes, bytes]] = {}

    def add(case: Case, image: bytes, sig: bytes) -> None:
        cases.append(case)
        blobs[case.name] = (image, sig)

    def image_for(name: str) -> bytes:
        return (f"#!ipxe\necho image {name}\n".encode()
                + hashlib.sha256(name.encode()).digest() * 64)

    def good(name: str, cert: x509.Certificate = signer, key: Key = leaf_key,
             ch: list[x509.Certificate] = chain, hash_name: str = "sha256") -> tuple[
                 bytes, bytes]:
        img = image_for(name)
        return img, sign(img, cert, key, ch, hash_name)

    # Good signatures.
    add(Case("good", True), *good("good"))
    for h in ("sha384", "sha512"):
        add(Case(f"good-{h}", True), *good(f"good-{h}", hash_name=h))
    ec_signer = leaf("ecdsa-signer", key=ec_key)
    add(Case("good-ecdsa", True), *good("good-ecdsa", ec_signer, ec_key))
    p384_key = ec.generate_private_key(ec.SECP384R1())
    add(Case("good-ecdsa-p384", True), *good("good-ecdsa-p384", leaf("p384-signer",
                                                                     key=p384_key), p384_key))
    p521_key = ec.generate_private_key(ec.SECP521R1())
    add(Case("ecdsa-p521", False, "unsupported-algorithm"),
        *good("ecdsa-p521", leaf("p521-signer", key=p521_key), p521_key))
    direct = leaf("direct-signer", issuer=(root, root_key))
    add(Case("good-no-intermediate", True), *good("good-no-intermediate", direct, leaf_key,
                                                   [root]))
    img, sig = good("good-pem")
    add(Case("good-pem", True), img,
        b"-----BEGIN CMS-----\n" + _b64lines(sig) + b"-----END CMS-----\n")
    add(Case("signer-cn", True, signer="BOOT-SIGNER.example.org"), *good("signer-cn"))
    add(Case("signer-san", True, signer="signer.example.org"), *good("signer-san"))
    add(Case("signer-wildcard", True, signer="pxe.boot.example.org"), *good("signer-wildcard"))
    # --signer as an IP address: iPXE's inet_aton() reads each part with strtoul(.., 0).
    import ipaddress

    ip_signer = leaf("ip-signer", san=[x509.IPAddress(ipaddress.ip_address("192.0.2.10"))])
    add(Case("signer-ip", True, signer="192.0.2.10"), *good("signer-ip", ip_signer))
    add(Case("signer-ip-octal", True, signer="0300.0.2.10"),
        *good("signer-ip-octal", ip_signer))
    add(Case("signer-ip-other", False, "signer-name", signer="192.0.2.11"),
        *good("signer-ip-other", ip_signer))
    # IPv6: iPXE's inet6_aton() reads each word with its strtoul(.., 16) and
    # ipv6_sock_aton() strips "[...]"; an IPv4-mapped dotted tail is not IPv6 to it. BIOS
    # builds have no IPv6 at all (NET_PROTO_IPV6 is off for pcbios): no match there.
    ip6_signer = leaf("ip6-signer", san=[
        x509.IPAddress(ipaddress.ip_address("2001:db8::10")),
        x509.IPAddress(ipaddress.ip_address("::ffff:192.0.2.10"))])
    for name, wanted, ok in [
            ("signer-ip6", "2001:db8::10", True),
            ("signer-ip6-long", "2001:0db8:0:0:0:0:0:0010", True),
            ("signer-ip6-bracketed", "[2001:DB8::10]", True),
            # iPXE's strtoul takes "0x" as a prefix only in base 0, not in base 16.
            ("signer-ip6-hex-prefix", "2001:0xdb8::0x10", False),
            ("signer-ip6-plus", "2001:+db8::+10", True),
            ("signer-ip6-other", "2001:db8::11", False),
            ("signer-ip6-two-gaps", "2001::db8::10", False),
            ("signer-ip6-mapped-dotted", "::ffff:192.0.2.10", False),
            ("signer-ip6-mapped-hex", "::ffff:c000:20a", True)]:
        add(Case(name, ok, None if ok else "signer-name", signer=wanted,
                 bios_ok=False if ok else None), *good(name, ip6_signer))

    # Two certificates naming each other as issuer (a cross-certificate each way): iPXE's
    # x509_auto_append stops only at a self-issued certificate or when none is found, so it
    # appends them in turn until it runs out of memory ("Not enough space").
    cross_to_other = make_cert("Corpus Root CA", root_key, (other_root, other_key),
                               not_before=long_ago, not_after=far, ca=True, key_usage=ca_ku)
    cross_back = make_cert("Untrusted Root CA", other_key, (root, root_key),
                           not_before=long_ago, not_after=far, ca=True, key_usage=ca_ku)
    add(Case("chain-loop", False, "chain-loop", isolate=True),
        *good("chain-loop", ch=[inter, cross_to_other, cross_back]))

    # Damage.
    img, sig = good("flipped-image-byte")
    damaged = bytearray(img)
    damaged[len(damaged) // 2] ^= 0x40
    add(Case("flipped-image-byte", False, "signature-mismatch"), bytes(damaged), sig)
    img, sig = good("flipped-signature-byte")
    add(Case("flipped-signature-byte", False, "signature-mismatch"), img,
        flip_signature_value(sig))
    img, sig = good("truncated-signature")
    add(Case("truncated-signature", False, "signature-format"), img, sig[: len(sig) - 100])
    img, sig = good("trailing-bytes")
    add(Case("trailing-bytes", False, "signature-format"), img, sig + b"\n")
    add(Case("garbage", False, "signature-format"), image_for("garbage"),
        hashlib.sha512(b"garbage").digest() * 8)
    add(Case("empty", False, "signature-format"), image_for("empty"), b"")

    # Bogus signers.
    bogus = {
        "missing-codesigning": (leaf("no-eku", eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
                                "code-signing"),
        "any-eku-only": (leaf("any-eku", eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]),
                         "code-signing"),
        "missing-digitalsignature": (leaf("no-ds", ku={"key_encipherment"}), "key-usage"),
        "missing-keyusage": (leaf("no-ku", ku=None), "key-usage"),
        "expired-signer": (leaf("expired", nb=now - 400 * DAY, na=now - 2 * DAY), "expired"),
        "not-yet-valid-signer": (leaf("future", nb=now + 2 * DAY), "not-yet-valid"),
        # Within iPXE's 12h30m margin (accepted) and just beyond it (refused).
        "margin-notbefore-inside": (leaf("nb-inside", nb=now + 12 * HOUR), None),
        "margin-notbefore-outside": (leaf("nb-outside", nb=now + 13 * HOUR), "not-yet-valid"),
        "margin-notafter-inside": (leaf("na-inside", na=now - 12 * HOUR), None),
        "margin-notafter-outside": (leaf("na-outside", na=now - 13 * HOUR), "expired"),
    }
    for name, (cert, rule) in bogus.items():
        add(Case(name, rule is None, rule), *good(name, cert))

    # Chains.
    img, sig = good("missing-intermediate")
    add(Case("missing-intermediate", False, "chain-incomplete", isolate=True), img,
        without_certificates(sig, [der(signer), der(root)]))
    img, sig = good("missing-root")
    add(Case("missing-root", False, "root-missing", isolate=True, ok_with_builtin_root=True,
             note="iPXE finds the root among its built-in CERT= certificates"), img,
        without_certificates(sig, [der(signer), der(inter)]))
    img, sig = good("no-certificates")
    add(Case("no-certificates", False, "certificates-missing"), img,
        without_certificates(sig, []))
    img = image_for("signed-attributes")
    add(Case("signed-attributes", False, "signed-attributes"), img,
        sign_with_attributes(img, signer, leaf_key, chain))
    img = image_for("signer-by-ski")
    add(Case("signer-by-ski", False, "signer-identifier"), img,
        sign_with_ski(img, signer, leaf_key, chain))
    add(Case("wrong-signer", False, "signer-name", signer="someone-else.example.org"),
        *good("wrong-signer"))
    add(Case("wildcard-needs-one-label", False, "signer-name", signer="boot.example.org"),
        *good("wildcard-needs-one-label"))

    other_int = make_cert("Untrusted Issuing CA", int_key, (other_root, other_key),
                          not_before=long_ago, not_after=far - DAY, ca=True,
                          key_usage=ca_ku)
    stranger = leaf("stranger", issuer=(other_int, int_key))
    add(Case("untrusted-root", False, "untrusted-root"),
        *good("untrusted-root", stranger, leaf_key, [other_int, other_root]))

    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.org")],
                              excluded_subtrees=None)
    crit_int = make_cert("Critical NC Issuing CA", int_key, (root, root_key),
                         not_before=long_ago, not_after=far - DAY, ca=True, key_usage=ca_ku,
                         extra=[(nc, True)])
    crit_leaf = leaf("under-critical-nc", issuer=(crit_int, int_key))
    add(Case("critical-unknown-extension", False, "critical-extension"),
        *good("critical-unknown-extension", crit_leaf, leaf_key, [crit_int, root]))
    noncrit_int = make_cert("Non-critical NC Issuing CA", int_key, (root, root_key),
                            not_before=long_ago, not_after=far - DAY, ca=True,
                            key_usage=ca_ku, extra=[(nc, False)])
    add(Case("noncritical-unknown-extension", True),
        *good("noncritical-unknown-extension",
              leaf("under-noncritical-nc", issuer=(noncrit_int, int_key)), leaf_key,
              [noncrit_int, root]))

    # pathLen 0 on the issuing CA, yet it issued another CA that signs.
    sub = make_cert("Too Deep Sub CA", other_key, (inter, int_key), not_before=long_ago,
                    not_after=far - 2 * DAY, ca=True, key_usage=ca_ku)
    deep = leaf("too-deep", issuer=(sub, other_key))
    add(Case("pathlen-violated", False, "path-length"),
        *good("pathlen-violated", deep, leaf_key, [sub, inter, root]))

    not_ca = make_cert("Not A CA", int_key, (root, root_key), not_before=long_ago,
                       not_after=far - DAY, ca=False, key_usage=ca_ku)
    under_not_ca = leaf("under-not-ca", issuer=(not_ca, int_key))
    add(Case("ca-false-issuer", False, "issuer-not-ca"),
        *good("ca-false-issuer", under_not_ca, leaf_key, [not_ca, root]))
    no_kcs = make_cert("No keyCertSign CA", int_key, (root, root_key), not_before=long_ago,
                       not_after=far - DAY, ca=True, key_usage={"crl_sign"})
    add(Case("issuer-without-keycertsign", False, "issuer-key-usage"),
        *good("issuer-without-keycertsign", leaf("under-no-kcs", issuer=(no_kcs, int_key)),
              leaf_key, [no_kcs, root]))
    old_int = make_cert("Expired Issuing CA", int_key, (root, root_key),
                        not_before=now - 800 * DAY, not_after=now - 3 * DAY, ca=True,
                        key_usage=ca_ku)
    add(Case("expired-intermediate", False, "expired"),
        *good("expired-intermediate",
              leaf("under-expired-ca", issuer=(old_int, int_key), nb=now - 700 * DAY),
              leaf_key, [old_int, root]))

    # Right names, wrong key: a certificate naming the issuing CA (or the root) as its
    # issuer but signed by another key. Only the issuer's signature on it binds it to
    # the trusted chain (x509_check_signature()); names alone are free to copy.
    add(Case("forged-signer", False, "certificate-signature"),
        *good("forged-signer", leaf("forged-signer", issuer=(inter, other_key)), leaf_key,
              chain))
    forged_int = make_cert("Corpus Issuing CA", int_key, (root, other_key),
                           not_before=long_ago, not_after=far - DAY, ca=True, path_len=0,
                           key_usage=ca_ku)
    add(Case("forged-intermediate", False, "certificate-signature", isolate=True),
        *good("forged-intermediate", leaf("under-forged-ca", issuer=(forged_int, int_key)),
              leaf_key, [forged_int, root]))

    # Several signers: all must verify (iPXE validates every signer's chain before it
    # looks at --signer, so a selected good signer does not rescue a broken one).
    img = image_for("two-signers")
    add(Case("two-signers", True), img,
        combine(sign(img, signer, leaf_key, chain), sign(img, direct, leaf_key, [root])))
    img = image_for("two-signers-one-bad")
    add(Case("two-signers-one-bad", False, "code-signing"), img,
        combine(sign(img, signer, leaf_key, chain),
                sign(img, bogus["missing-codesigning"][0], leaf_key, chain)))
    img = image_for("two-signers-select-good")
    add(Case("two-signers-select-good", True, signer="boot-signer.example.org"), img,
        combine(sign(img, signer, leaf_key, chain),
                sign(img, bogus["missing-codesigning"][0], leaf_key, chain)))
    img = image_for("two-signers-select-past-untrusted")
    add(Case("two-signers-select-past-untrusted", False, "untrusted-root",
             signer="boot-signer.example.org"), img,
        combine(sign(img, signer, leaf_key, chain),
                sign(img, stranger, leaf_key, [other_int, other_root])))


    # --- iPXE's own parser, field by field (x509.c, asn1.c, cms.c, rsa.c, ecdsa.c) ----------
    chain_der = [der(inter), der(root)]

    def raw_case(name: str, expect: bool, rule: str | None, leaf_der: bytes,
                 others: list[bytes] | None = None, *, key: Key = leaf_key, **kw: object) -> None:
        img = image_for(name)
        signature = _raw_sign(key, hashlib.sha256(img).digest(), prehashed=True)
        si = raw_signer_info(leaf_der, signature)
        add(Case(name, expect, rule, **kw),  # type: ignore[arg-type]
            img, raw_signed_data([leaf_der, *(chain_der if others is None else others)], [si]))

    base = leaf("forge-template")
    fields = children(base.tbs_certificate_bytes)
    ext_list = children(children(fields[7])[0])

    def exts(*items: bytes) -> bytes:
        return tlv(0xA3, seq(*items))

    ku_ext, eku_ext = ext_list[1], ext_list[2]  # basicConstraints, keyUsage, extKeyUsage
    # BIT STRINGs: the signatureValue must have 0 unused bits (asn1_enter_bits(.., NULL)).
    raw_case("cert-sig-unused-bits", False, "certificate-unparseable",
             forge(leaf("sig-unused-bits"), int_key, unused_bits=1))
    bad_inter = forge(inter, root_key, unused_bits=3)
    raw_case("intermediate-sig-unused-bits", False, "certificate-unparseable",
             der(leaf("under-bad-bitstring")), [bad_inter, der(root)], isolate=True)
    # keyUsage may have unused bits, but its padding bits must be zero.
    raw_case("keyusage-nonzero-padding", False, "certificate-unparseable",
             forge(leaf("ku-padding"), int_key, edit={7: exts(
                 ext_list[0], extension("2.5.29.15", tlv(0x03, b"\x07\x81"), CRITICAL),
                 eku_ext)}))
    raw_case("keyusage-padded-ok", True, None,
             forge(leaf("ku-padded"), int_key, edit={7: exts(
                 ext_list[0], extension("2.5.29.15", tlv(0x03, b"\x07\x80"), CRITICAL),
                 eku_ext)}))
    # Times: YY/YYYY MM DD HH MM [SS] Z, nothing else; no range checks.
    na = now + 700 * DAY
    raw_case("time-fraction", False, "certificate-unparseable",
             forge(leaf("time-fraction"), int_key, edit={4: seq(
                 gen_time(long_ago, "%Y%m%d%H%M%S.5Z"), utc_time(na))}))
    raw_case("time-offset", False, "certificate-unparseable",
             forge(leaf("time-offset"), int_key, edit={4: seq(
                 utc_time(long_ago), utc_time(na, "%y%m%d%H%M%S+0000"))}))
    raw_case("time-no-seconds", True, None,
             forge(leaf("time-no-seconds"), int_key, edit={4: seq(
                 utc_time(long_ago, "%y%m%d%H%MZ"), utc_time(na))}))
    raw_case("time-month-13", True, None,
             forge(leaf("time-month-13"), int_key, edit={4: seq(
                 tlv(0x18, f"{now.year - 2:04d}1301000000Z".encode()), utc_time(na))}))
    raw_case("time-generalized-before-2050", True, None,
             forge(leaf("time-generalized"), int_key, edit={4: seq(
                 gen_time(long_ago), gen_time(na))}))
    # Versions and algorithm identifiers: iPXE reads any version, compares algorithms only.
    raw_case("cert-version-4", True, None,
             forge(leaf("version-4"), int_key, edit={0: tlv(0xA0, integer(3))}))
    raw_case("cert-v1-with-extensions", True, None,
             forge(leaf("v1-extensions"), int_key, edit={0: b""}))
    raw_case("cert-version-negative", False, "certificate-unparseable",
             forge(leaf("version-negative"), int_key, edit={0: tlv(0xA0, integer(-1))}))
    raw_case("cert-sigalg-params-differ", True, None,
             forge(leaf("sigalg-params"), int_key, outer_alg=seq(oid(OID_SHA256_RSA))))
    raw_case("cert-sigalg-mismatch", False, "certificate-unparseable",
             forge(leaf("sigalg-mismatch"), int_key, outer_alg=seq(
                 oid("1.2.840.113549.1.1.12"), b"\x05\x00")))
    raw_case("cert-trailing-field", True, None,
             forge(leaf("trailing-field"), int_key, trailing=tlv(0x04, b"extra")))
    # Extensions: critical is any non-zero one-byte BOOLEAN; unknown ones only if critical.
    raw_case("critical-flag-0x01", True, None,
             forge(leaf("critical-0x01"), int_key, edit={7: exts(
                 ext_list[0], extension("2.5.29.15", children(ku_ext)[2][2:],
                                        tlv(0x01, b"\x01")), eku_ext)}))
    raw_case("critical-flag-two-bytes", False, "certificate-unparseable",
             forge(leaf("critical-2bytes"), int_key, edit={7: exts(
                 ext_list[0], extension("2.5.29.15", children(ku_ext)[2][2:],
                                        tlv(0x01, b"\xff\xff")), eku_ext)}))
    raw_case("unknown-extension-garbage", True, None,
             forge(leaf("unknown-garbage"), int_key, edit={7: exts(
                 *ext_list, extension("1.2.3.4.5", b"\x30\xff not DER at all"))}))
    big_path = forge(inter, root_key, edit={7: tlv(0xA3, seq(
        extension("2.5.29.19", seq(CRITICAL, integer(2**31)), CRITICAL),
        *children(children(children(inter.tbs_certificate_bytes)[7])[0])[1:]))})
    raw_case("pathlen-overflows-int", False, "certificate-unparseable",
             der(leaf("under-big-pathlen")), [big_path, der(root)], isolate=True)
    ocsp_dns = seq(seq(oid("1.3.6.1.5.5.7.48.1"), tlv(0x82, b"ocsp.invalid")))
    raw_case("ocsp-location-not-uri", False, "certificate-unparseable",
             forge(leaf("ocsp-dns"), int_key, edit={7: exts(
                 *ext_list, extension("1.3.6.1.5.5.7.1.1", ocsp_dns))}))
    ca_issuers = seq(seq(oid("1.3.6.1.5.5.7.48.2"), tlv(0x86, b"http://ca.invalid/i.crt")))
    raw_case("aia-ca-issuers-only", True, None,
             forge(leaf("ca-issuers"), int_key, edit={7: exts(
                 *ext_list, extension("1.3.6.1.5.5.7.1.1", ca_issuers))}))
    raw_case("san-malformed", True, None,
             forge(leaf("san-malformed"), int_key, edit={7: exts(
                 *ext_list, extension("2.5.29.17", seq(tlv(0x82, b"x.example"),
                                                        b"\xa0\x7f")))}))

    # SignerInfo and SignedData fields iPXE skips.
    signer_der = der(signer)

    def si_case(name: str, expect: bool, rule: str | None, *, sd: dict[str, object] | None = None,
                key: Key = leaf_key, cert: bytes = signer_der, hash_name: str = "sha256",
                mangle: object = None, **si: object) -> None:
        img = image_for(name)
        digest = hashlib.new(hash_name, img).digest()
        signature = _raw_sign(key, digest, hash_name, prehashed=True)
        if callable(mangle):
            signature = mangle(signature)
        info = raw_signer_info(cert, signature, **si)  # type: ignore[arg-type]
        add(Case(name, expect, rule), img,
            raw_signed_data([cert, *chain_der], [info], **(sd or {})))  # type: ignore[arg-type]

    si_case("si-sigalg-sha1-digest-sha256", True, None,
            sig_alg=seq(oid("1.2.840.113549.1.1.5"), b"\x05\x00"))
    si_case("si-sigalg-sha512-digest-sha256", True, None,
            sig_alg=seq(oid("1.2.840.113549.1.1.13"), b"\x05\x00"))
    si_case("si-digest-as-sha256withrsa", True, None,
            digest_alg=seq(oid(OID_SHA256_RSA), b"\x05\x00"))
    si_case("si-sigalg-unknown", False, "unsupported-algorithm",
            sig_alg=seq(oid("1.2.840.113549.1.1.4"), b"\x05\x00"))
    si_case("si-version-7", True, None, version=7)
    si_case("sd-version-5", True, None, sd={"sd_version": 5})
    si_case("sd-digest-algorithms-empty", True, None, sd={"digest_algs": tlv(0x31, b"")})
    si_case("sd-crls-present", True, None,
            sd={"crls": tlv(0xA1, seq(tlv(0x04, b"not a CRL")))})
    si_case("si-unsigned-attrs", True, None,
            unsigned_attrs=tlv(0xA1, seq(oid("1.2.3.4"), tlv(0x31, tlv(0x04, b"x")))))
    si_case("si-signed-attrs-over-image", True, None,
            signed_attrs=tlv(0xA0, seq(oid("1.2.840.113549.1.9.3"),
                                       tlv(0x31, oid("1.2.840.113549.1.7.1")))))
    si_case("si-sigalg-ecdsa-sha384-digest-sha256", True, None, key=ec_key,
            cert=der(ec_signer), sig_alg=seq(oid("1.2.840.10045.4.3.3")))
    si_case("si-sigalg-ecdsa-with-rsa-key", False, "signature-mismatch",
            sig_alg=seq(oid("1.2.840.10045.4.3.2")))

    # A length field of more than four bytes: iPXE's unsigned int wraps (asn1_start).
    data_oid = oid("1.2.840.113549.1.7.1")
    si_case("length-field-five-bytes", True, None,
            sd={"encap": b"\x30\x85\x00\x00\x00\x00" + bytes([len(data_oid)]) + data_oid})
    # Keys are parsed only when used: a broken key on a certificate nobody uses is fine,
    # a compressed EC point on the signer is not (ecdsa_parse_key wants 04 || X || Y).
    bad_key = forge(other_root, other_key, edit={6: seq(
        seq(oid("1.2.840.113549.1.1.1"), b"\x05\x00"),
        tlv(0x03, b"\x00" + seq(integer(0))))})
    img = image_for("unused-cert-bad-key")
    signature = _raw_sign(leaf_key, hashlib.sha256(img).digest(), prehashed=True)
    add(Case("unused-cert-bad-key", True, None, isolate=True), img, raw_signed_data(
        [signer_der, *chain_der, bad_key], [raw_signer_info(signer_der, signature)]))
    point = ec_key.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.CompressedPoint)
    compressed = forge(leaf("compressed-point", key=ec_key), int_key, edit={6: seq(
        seq(oid("1.2.840.10045.2.1"), oid("1.2.840.10045.3.1.7")),
        tlv(0x03, b"\x00" + point))})
    si_case("signer-ec-point-compressed", False, "certificate-key", key=ec_key,
            cert=compressed, sig_alg=seq(oid("1.2.840.10045.4.3.2")))

    def loose_ecdsa(signature: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        parts = []
        for value in decode_dss_signature(signature):
            raw = value.to_bytes(32, "big")
            parts.append(tlv(0x02, raw if raw[0] & 0x80 else b"\x00" + raw))
        return seq(*parts)

    si_case("ecdsa-signature-not-der", True, None, key=ec_key, cert=der(ec_signer),
            sig_alg=seq(oid("1.2.840.10045.4.3.2")), mangle=loose_ecdsa)
    # An RSA signature must be exactly as long as the modulus (rsa_verify: ERANGE).
    for n in range(4096):
        img = image_for(f"rsa-short-{n}")
        signature = _raw_sign(leaf_key, hashlib.sha256(img).digest(), prehashed=True)
        if signature[0] == 0:
            cases.append(Case("rsa-signature-short", False, "signature-mismatch",
                              note="leading zero byte dropped: OpenSSL accepts it"))
            blobs["rsa-signature-short"] = (img, raw_signed_data(
                [signer_der, *chain_der], [raw_signer_info(signer_der, signature[1:])]))
            break

    # PEM as pem.c reads it: markers at a line start, base64 with any whitespace, no
    # headers; only the first object of the decoded bytes counts.
    def pem_case(name: str, expect: bool, rule: str | None, wrap: object) -> None:
        img, sig = good(name)
        add(Case(name, expect, rule), img, wrap(sig))  # type: ignore[operator]

    pem_case("pem-with-header", False, "signature-format", lambda sig: (
        b"-----BEGIN CMS-----\nProc-Type: 4,ENCRYPTED\n\n" + _b64lines(sig)
        + b"-----END CMS-----\n"))
    pem_case("pem-spaces-in-lines", True, None, lambda sig: (
        b"-----BEGIN CMS-----\n" + _b64lines(sig).replace(b"A", b" A\t")
        + b"-----END CMS-----\n"))
    pem_case("pem-begin-mid-line", False, "signature-format", lambda sig: (
        b"sig: -----BEGIN CMS-----\n" + _b64lines(sig) + b"-----END CMS-----\n"))
    pem_case("pem-object-then-garbage", True, None, lambda sig: (
        b"-----BEGIN CMS-----\n" + _b64lines(sig + b"\x04\x03abc")
        + b"-----END CMS-----\n"))

    # A root with the trusted root's names and another key (iPXE also has the real root
    # built in with CERT=, so it appends it and refuses the look-alike's signature).
    lookalike_key = rsa_key()
    lookalike = make_cert("Corpus Root CA", lookalike_key, None, not_before=long_ago,
                          not_after=far, ca=True, key_usage=ca_ku)
    add(Case("lookalike-root", False, "untrusted-root", isolate=True),
        *good("lookalike-root", leaf("lookalike-signer", issuer=(lookalike, lookalike_key)),
              leaf_key, [lookalike]))

    # An OCSP responder in AIA: iPXE must reach it at boot (none under QEMU's restricted
    # network), so it rejects; verify predicts that unless told the responder is reachable.
    aia = x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.oid.AuthorityInformationAccessOID.OCSP,
        x509.UniformResourceIdentifier("http://ocsp.invalid/"))])
    ocsp_leaf = make_cert("ocsp-signer", leaf_key, (inter, int_key), not_before=long_ago,
                          not_after=now + 730 * DAY, ca=False, key_usage=leaf_ku, eku=cs,
                          extra=[(aia, False)])
    add(Case("ocsp-signer", False, "ocsp-required", isolate=True,
             note="no OCSP responder is reachable"), *good("ocsp-signer", ocsp_leaf))

    # The same good signature at other client clocks.
    img, sig = good("later-clock")
    add(Case("later-clock", False, "expired", at_offset_s=int((800 * DAY).total_seconds())),
        img, sig)
    add(Case("ecdsa-on-old-ipxe", False, "unsupported-algorithm", ipxe=False,
             ipxe_version="1.21.1"), *good("ecdsa-on-old-ipxe", ec_signer, ec_key))

    for name, (image, sig) in blobs.items():
        (directory / f"{name}.img").write_bytes(image)
        (directory / f"{name}.img.sig").write_bytes(sig)
    (directory / "root.pem").write_bytes(pem(root))
    (directory / "other-root.pem").write_bytes(pem(other_root))
    (directory / "chain.pem").write_bytes(pem(inter) + pem(root))
    (directory / "signer.pem").write_bytes(pem(signer))
    corpus = Corpus(directory, now, directory / "root.pem", directory / "other-root.pem", cases)
    (directory / "corpus.json").write_text(json.dumps({
        "now": now.isoformat(),
        "cases": [asdict(c) for c in cases],
    }, indent=2))
    return corpus


def _b64lines(data: bytes) -> bytes:
    import base64

    text = base64.b64encode(data)
    return b"".join(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args()
    corpus = generate(args.outdir)
    for case in corpus.cases:
        print(f"{case.name:34} {'ok' if case.expect_ok else 'fail':4} {case.rule or ''}")
    print(f"{len(corpus.cases)} cases in {os.fspath(args.outdir)}")


if __name__ == "__main__":
    main()

