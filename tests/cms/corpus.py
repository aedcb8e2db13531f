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

    # An OCSP responder in AIA: iPXE must reach it at boot (none under QEMU's restricted
    # network), so trustboot accepts with a warning and the real iPXE rejects.
    aia = x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.oid.AuthorityInformationAccessOID.OCSP,
        x509.UniformResourceIdentifier("http://ocsp.invalid/"))])
    ocsp_leaf = make_cert("ocsp-signer", leaf_key, (inter, int_key), not_before=long_ago,
                          not_after=now + 730 * DAY, ca=False, key_usage=leaf_ku, eku=cs,
                          extra=[(aia, False)])
    add(Case("ocsp-signer", True, ipxe=False, note="real iPXE rejects: no OCSP responder"),
        *good("ocsp-signer", ocsp_leaf))

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

