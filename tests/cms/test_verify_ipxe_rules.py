"""`trustboot verify` gives iPXE's verdict: options and inputs around the rules (issue 8).

The rules themselves are the corpus (test_corpus.py), judged by a real iPXE in
test_ipxe_corpus.py; these cover the command: OCSP, --strict, --cert lists, look-alike
roots, hostile --at/--trust/--sig values and the pki's revocation list.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cms.corpus import Corpus
from trustboot.cli.main import cli


def _verify(corpus: Corpus, name: str, *extra: str, trust: bool = True) -> tuple[int, str]:
    case = corpus.case(name)
    args = ["verify", str(corpus.directory / case.image), "--at", corpus.at(case).isoformat()]
    if trust:
        args += ["--trust", str(corpus.root)]
    result = CliRunner().invoke(cli, [*args, *extra])
    return result.exit_code, result.output


def test_ocsp_url_predicts_rejection_unless_responder_reachable(corpus: Corpus) -> None:
    code, out = _verify(corpus, "ocsp-signer")
    assert code == 4, out
    assert "[rule: ocsp-required]" in out and "--assume-ocsp-reachable" in out
    code, out = _verify(corpus, "ocsp-signer", "--assume-ocsp-reachable")
    assert code == 0, out
    assert "warning:" in out and "OCSP" in out


@pytest.mark.parametrize("name, rule", [
    ("si-sigalg-sha1-digest-sha256", "signature-algorithm-mismatch"),
    ("sd-version-5", "signature-structure"),
    ("si-signed-attrs-over-image", "signed-attributes-ignored"),
    ("cert-sigalg-params-differ", "certificate-altered"),
    ("time-month-13", "certificate-encoding"),
])
def test_what_ipxe_tolerates_is_a_warning_and_a_strict_failure(
        corpus: Corpus, name: str, rule: str) -> None:
    code, out = _verify(corpus, name)
    assert code == 0, out
    assert "warning:" in out
    code, out = _verify(corpus, name, "--strict")
    assert code == 4, out
    assert f"[rule: {rule}]" in out and "iPXE itself would accept" in out


def test_strict_accepts_a_clean_signature(corpus: Corpus) -> None:
    code, out = _verify(corpus, "good", "--strict")
    assert code == 0, out
    assert "warning:" not in out


def test_cert_takes_a_comma_separated_list(corpus: Corpus) -> None:
    other = corpus.directory / "signer.pem"  # any certificate but the missing root
    code, out = _verify(corpus, "missing-root", "--cert", f"{other},{corpus.root}")
    assert code == 0, out
    code, out = _verify(corpus, "missing-root", "--cert", str(other))
    assert code == 4 and "[rule: root-missing]" in out


def test_lookalike_root_is_untrusted_with_and_without_cert(corpus: Corpus) -> None:
    for extra in ([], ["--cert", str(corpus.root)]):
        code, out = _verify(corpus, "lookalike-root", *extra)
        assert code == 4, out
        assert "[rule: untrusted-root]" in out, out
        assert "reissue it" not in out


def test_far_future_clock_is_a_verdict_not_a_crash(corpus: Corpus) -> None:
    code, out = _verify(corpus, "good", "--at", "9999-12-31T23:59:59Z")
    assert code == 4, out
    assert "[rule: expired]" in out
    code, out = _verify(corpus, "good", "--at", "0001-01-01T00:00:00Z")
    assert code == 4 and "[rule: not-yet-valid]" in out, out
    code, out = _verify(corpus, "good", "--at", "@99999999999999999")
    assert code == 3 and "is not a time" in out, out


def test_malformed_fingerprint_is_invalid_input(corpus: Corpus) -> None:
    case = corpus.case("good")
    for bad in ("sha256:zz", "sha256:" + "ab" * 31, "SHA256:xyz"):
        result = CliRunner().invoke(cli, ["verify", str(corpus.directory / case.image),
                                          "--trust", bad])
        assert result.exit_code == 3, (bad, result.output)
        assert "not a SHA-256 fingerprint" in result.output


def test_fifo_or_device_as_signature_is_refused_unread(corpus: Corpus, tmp_path: Path) -> None:
    case = corpus.case("good")
    fifo = tmp_path / "sig.fifo"
    os.mkfifo(fifo)
    for sig in (fifo, Path("/dev/zero")):
        # A subprocess with a timeout: reading the FIFO would block forever.
        proc = subprocess.run(
            [sys.executable, "-m", "trustboot", "verify", str(corpus.directory / case.image),
             "--sig", str(sig), "--trust", str(corpus.root)],
            capture_output=True, text=True, timeout=60)
        # an operand (the image or its signature) that cannot be read is I/O, exit 1;
        # configuration files (--trust, --cert below) are 3
        assert proc.returncode == 1, proc.stderr
        assert "not a regular file" in proc.stderr


def test_device_as_trust_or_cert_is_refused_unread(corpus: Corpus, tmp_path: Path) -> None:
    case = corpus.case("good")
    image = str(corpus.directory / case.image)
    for args in (["--trust", "/dev/zero"], ["--trust", str(corpus.root), "--cert",
                                             f"{corpus.root},/dev/zero"]):
        proc = subprocess.run([sys.executable, "-m", "trustboot", "verify", image, *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert "not a regular file" in proc.stderr


def test_oversized_signature_refused_unread(corpus: Corpus, tmp_path: Path) -> None:
    case = corpus.case("good")
    big = tmp_path / "big.sig"
    with big.open("wb") as fh:
        fh.truncate(64 << 20)  # sparse: a read of it all would show in the test's time
    code, out = _verify(corpus, "good", "--sig", str(big))
    assert code == 4 and "[rule: signature-too-large]" in out, out
    del case


# --- the pki's revocation list ---------------------------------------------------------------

CA_PASS = "correct horse battery"
KEY_PASS = "key passphrase 1"


def _ok(*argv: str) -> None:
    r = CliRunner().invoke(cli, list(argv))
    assert r.exit_code == 0, (argv, r.output)


def _pki_with_signer(d: Path) -> tuple[Path, list[str]]:
    """ca.pass and key.pass (0600) in ``d``, and a CA home d/pki with a code-signing
    certificate "signer" (its key under key.pass). Returns the CA home and the CA's
    passphrase option."""
    for name, text in (("ca.pass", CA_PASS), ("key.pass", KEY_PASS)):
        (d / name).write_text(text + "\n")
        (d / name).chmod(0o600)
    pki = d / "pki"
    ca = ["--passphrase-file", str(d / "ca.pass")]
    _ok("ca", "init", "--key-type", "ec-p256", "--pki", str(pki), *ca)
    _ok("ca", "issue", "codesign", "signer", "--pki", str(pki), *ca,
        "--key-passphrase-file", str(d / "key.pass"))
    return pki, ca


def _signed_image(d: Path, pki: Path) -> Path:
    """d/vmlinuz, signed by the CA home ``pki``'s "signer" (key under d/key.pass)."""
    image = d / "vmlinuz"
    image.write_bytes(b"kernel" * 1000)
    _ok("sign", str(image), "--key", "signer", "--pki", str(pki),
        "--passphrase-file", str(d / "key.pass"))
    return image


def _revoke_signer(pki: Path, ca: list[str]) -> None:
    _ok("ca", "revoke", "signer", "--reason", "key_compromise", "--pki", str(pki), *ca)


@pytest.fixture(scope="module")
def revoked_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A pki whose signer signed an image and was then revoked."""
    d = tmp_path_factory.mktemp("revoked")
    pki, ca = _pki_with_signer(d)
    image = _signed_image(d, pki)
    _revoke_signer(pki, ca)
    return pki, image


def test_pki_warns_that_the_signer_is_revoked(revoked_pki: tuple[Path, Path]) -> None:
    pki, image = revoked_pki
    result = CliRunner().invoke(cli, ["verify", str(image), "--pki", str(pki)])
    assert result.exit_code == 0, result.output  # iPXE reads no CRL: it still accepts
    assert "revoked" in result.stderr and "iPXE does not read CRLs" in result.stderr
    assert "rotate the signer" in result.stderr and "TRUST=" in result.stderr
    doc = CliRunner().invoke(cli, ["verify", str(image), "--pki", str(pki), "--json"])
    assert doc.exit_code == 0
    revoked = json.loads(doc.stdout)["revoked"]
    assert [r["name"] for r in revoked] == ["signer"]


def test_unrelated_pki_says_nothing(corpus: Corpus, revoked_pki: tuple[Path, Path]) -> None:
    pki, _ = revoked_pki
    code, out = _verify(corpus, "good", "--pki", str(pki))
    assert code == 0 and "revoked" not in out


def test_pki_warns_about_a_certificate_of_a_key_revoked_as_compromised(
        tmp_path: Path) -> None:
    """The CA index revoked "signer" as key_compromise; a copy of the CA home made before
    (a backup, a second build host) then renewed "signer" with the same key. The stolen
    key signs with that certificate: iPXE accepts it (its chain is the trusted root's),
    and publish refuses it (publish.revocation: the key, not only the certificate). verify
    --pki matched the index by fingerprint only and said nothing: the index does not
    know the renewed certificate. Now the same lookup as publish's names it."""
    import shutil

    pki, ca = _pki_with_signer(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(pki, copy, symlinks=True)
    _revoke_signer(pki, ca)
    _ok("ca", "renew", "signer", "--pki", str(copy), *ca)
    image = _signed_image(tmp_path, copy)
    run = CliRunner().invoke
    result = run(cli, ["verify", str(image), "--pki", str(pki)])
    assert result.exit_code == 0, result.output  # iPXE reads no CRL: it still accepts
    assert "revoked as compromised with certificate signer" in result.stderr, result.output
    assert "iPXE does not read CRLs" in result.stderr and "rotate the signer" in result.stderr
    doc = run(cli, ["verify", str(image), "--pki", str(pki), "--json"])
    assert doc.exit_code == 0, doc.output
    (entry,) = json.loads(doc.stdout)["revoked"]
    assert entry["reason"] == "key_compromise" and entry["via"].startswith("signer (serial")
    # the renewed certificate is not the revoked one: another serial
    assert entry["serial"] not in entry["via"]
    # the copy's own index (which never heard of the revocation) says nothing, as before
    quiet = run(cli, ["verify", str(image), "--pki", str(copy)])
    assert quiet.exit_code == 0 and "revoked" not in quiet.output, quiet.output


@pytest.mark.parametrize(("text", "expected"), [
    ("::", "::"), ("::1", "::1"), ("1::", "1::"), ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
    ("2001:db8::10", "2001:db8::10"), ("[2001:db8::10]", "2001:db8::10"),
    ("+2001:db8::  10", "2001:db8::10"), ("fFfF::", "ffff::"), ("0x2001::", None),
    ("2001:0xdb8::", None),
    ("1:2:3:4:5:6:7:8:9", None), ("1:2:3:4:5:6:7", None), ("1::2::3", None),
    ("10000::", None), ("-1::", None), ("::ffff:1.2.3.4", None), ("fe80::1%net0", None),
    ("1:2:3:4:5:6:7:", "1:2:3:4:5:6:7:0"), ("", None), ("g::", None), ("[::1", None),
])
def test_ipv6_signer_names_parse_as_ipxe_does(text: str, expected: str | None) -> None:
    """--signer as iPXE's ipv6_sock_aton() reads it (each word with iPXE's strtoul(.., 16),
    which takes no "0x" in base 16), not as Python's ipaddress would (which takes dotted
    IPv4 tails)."""
    import ipaddress

    from trustboot.cms.verify import _sock_aton6

    packed = _sock_aton6(text)
    assert packed == (ipaddress.IPv6Address(expected).packed if expected else None)


def test_crl_warns_about_a_revoked_signer_without_the_ca_home(
        revoked_pki: tuple[Path, Path], corpus: Corpus, tmp_path: Path) -> None:
    """A pipeline with only the published CRL learns that the signer was revoked (iPXE
    still accepts); an unrelated CRL says so; an altered one is refused."""
    pki, image = revoked_pki
    crl = pki / "crl.pem"
    root = ["--trust", str(pki / "ca.crt"), "--pki", str(tmp_path / "no-pki")]
    result = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(crl)])
    assert result.exit_code == 0, result.output
    print(result.output)
    assert "is revoked by" in result.stderr and "key_compromise" in result.stderr
    assert "iPXE does not read CRLs" in result.stderr
    doc = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(crl), "--json"])
    assert doc.exit_code == 0, doc.output
    (entry,) = json.loads(doc.stdout)["revoked"]
    assert entry["name"] == "signer" and entry["reason"] == "key_compromise"
    # Past its next update the CRL is stale, and the warning says so.
    from cryptography import x509 as _x509

    later = _x509.load_pem_x509_crl(crl.read_bytes()).next_update_utc
    assert later is not None
    stale = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(crl),
                                     "--at", (later + dt.timedelta(days=1)).isoformat()])
    assert stale.exit_code == 0 and "is stale" in stale.stderr, stale.output
    # With the pki too: reported once.
    both = CliRunner().invoke(cli, ["verify", str(image), "--pki", str(pki), "--crl", str(crl),
                                    "--json"])
    assert len(json.loads(both.stdout)["revoked"]) == 1
    # A CRL of another CA says nothing about this signer, and says so.
    code, out = _verify(corpus, "good", "--crl", str(crl))
    assert code == 0 and "says nothing about them" in out and "revoked by" not in out
    # An altered CRL (a byte of its signature flipped) is not evidence either way.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = bytearray(x509.load_pem_x509_crl(crl.read_bytes()).public_bytes(
        serialization.Encoding.DER))
    der[-5] ^= 0x01
    bad = tmp_path / "altered.crl"
    bad.write_bytes(bytes(der))
    altered = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(bad)])
    assert altered.exit_code == 3 and "does not verify" in altered.output, altered.output
    junk = tmp_path / "junk.crl"
    junk.write_bytes(b"not a crl")
    refused = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(junk)])
    assert refused.exit_code == 3 and "is not a CRL" in refused.output, refused.output


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.10", "192.0.2.10"), ("0300.0.2.012", "192.0.2.10"), ("0xc0.0.2.0xa", "192.0.2.10"),
    ("+192. 0.2.10", "192.0.2.10"), ("0x.0.2.10", "0.0.2.10"), ("+.0.2.10", "0.0.2.10"),
    ("0.0.2.", None), ("256.0.2.10", None), ("-1.0.2.10", None), ("1.2.3", None),
    ("1.2.3.4.", None), ("1.2.3.4 ", None), (".1.2.3", None), ("09.1.2.3", None),
])
def test_ipv4_signer_names_parse_as_ipxe_does(text: str, expected: str | None) -> None:
    """iPXE's inet_aton() with iPXE's strtoul(.., 0): a sign, whitespace or a bare "0x"
    is progress (value 0), unlike C's strtoul."""
    import ipaddress

    from trustboot.ipxeparse import inet_aton

    assert inet_aton(text) == (ipaddress.IPv4Address(expected).packed if expected else None)


def test_a_crl_check_against_an_issuer_that_is_not_strict_der_is_no_internal_error(
        revoked_pki: tuple[Path, Path], tmp_path: Path) -> None:
    """The outer length of a certificate in a signature is covered by no signature: anyone
    who can edit the .sig can write the issuing CA's in a non-minimal form. iPXE (and the
    verifier, which parses as iPXE does) accept it; cryptography's strict DER reader,
    which the CRL check used on it, raised ValueError: exit 70. Now the CRL check says
    it cannot judge the signer (exit 4), never that it is not revoked."""
    from tests.cms.corpus import children, seq, tlv

    pki, image = revoked_pki
    sig = image.with_name(image.name + ".sig").read_bytes()
    info, wrapped = children(sig)
    fields = children(children(wrapped)[0])
    certs = children(fields[3])
    stretched = []  # every certificate but the signer's: its issuer among them
    for cert in certs[1:]:
        # 30 81 LL / 30 82 LL LL -> one more length byte, led by 00
        count = cert[1] & 0x7F if cert[1] & 0x80 else 0
        assert count, "a certificate is longer than 127 bytes"
        stretched.append(bytes([0x30, 0x80 | (count + 1), 0]) + cert[2:])
    fields[3] = tlv(0xA0, b"".join([certs[0], *stretched]))
    odd = tmp_path / "vmlinuz"
    odd.write_bytes(image.read_bytes())
    odd.with_name("vmlinuz.sig").write_bytes(seq(info, tlv(0xA0, seq(*fields))))
    root = ["--trust", str(pki / "ca.crt"), "--pki", str(tmp_path / "no-pki")]
    plain = CliRunner().invoke(cli, ["verify", str(odd), *root])
    assert plain.exit_code == 0, plain.output  # iPXE accepts it
    # not DER, though: a warning, and a refusal under --strict
    assert "longer form than needed" in plain.stderr, plain.output
    strict = CliRunner().invoke(cli, ["verify", str(odd), *root, "--strict"])
    assert strict.exit_code == 4 and "longer form than needed" in strict.output, strict.output
    checked = CliRunner().invoke(cli, ["verify", str(odd), *root, "--crl",
                                       str(pki / "crl.pem")])
    assert checked.exit_code == 4, checked.output
    assert "not strict DER" in checked.output and "InternalError" not in checked.output


def test_a_crl_the_ca_home_accepts_is_read_by_verify_and_publish(
        revoked_pki: tuple[Path, Path], tmp_path: Path) -> None:
    """The CA home reads its CRLs up to store.MAX_CRL_FILE (64 MiB); verify --crl and
    publish's --crl capped the same file at 16 MiB each, with their own constants: a CA
    with many revocations published a CRL that verify and publish refused as "larger
    than". One cap now, in one place; past it, all three refuse."""
    from trustboot.ca.store import MAX_CRL_FILE
    from trustboot.publish.revocation import Revocations

    pki, image = revoked_pki
    crl = pki / "crl.pem"
    big = tmp_path / "big-crl.pem"  # the PEM block, then blank lines: 20 MiB in all
    big.write_bytes(crl.read_bytes() + b"\n" * ((20 << 20) - crl.stat().st_size))
    root = ["--trust", str(pki / "ca.crt"), "--pki", str(tmp_path / "no-pki")]
    result = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(big)])
    assert result.exit_code == 0, result.output
    print(result.output)
    assert "is revoked by" in result.stderr and "key_compromise" in result.stderr
    Revocations.load(crl=big)  # publish's gate reads it too
    with big.open("r+b") as fh:
        fh.truncate(MAX_CRL_FILE + 1)  # sparse
    over = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(big)])
    assert over.exit_code == 3 and f"larger than {MAX_CRL_FILE} bytes" in over.output, \
        over.output


def test_a_crl_entry_without_a_reason_is_reported_unspecified(
        revoked_pki: tuple[Path, Path], tmp_path: Path) -> None:
    """A CRL entry without a reasonCode (RFC 5280: "unspecified"; other CAs' CRLs often
    have none) was reported with reason "" by verify --crl while publish's gate wrote
    "unspecified": one wording everywhere."""
    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives import hashes, serialization

    from trustboot.ca.store import CertificateAuthority
    from trustboot.secrets import constant

    pki, image = revoked_pki
    ca = CertificateAuthority.open(pki)
    issuer = ca.issuing_cert
    now = dt.datetime.now(dt.UTC)
    signer = ca.get("signer").load_cert()
    crl = (_x509.CertificateRevocationListBuilder()
           .issuer_name(issuer.subject)
           .last_update(now - dt.timedelta(hours=1))
           .next_update(now + dt.timedelta(days=7))
           .add_revoked_certificate(_x509.RevokedCertificateBuilder()
                                    .serial_number(signer.serial_number)
                                    .revocation_date(now - dt.timedelta(minutes=5))
                                    .build())
           .sign(ca.load_issuing_key(constant(CA_PASS.encode())), hashes.SHA256()))
    assert not list(crl[0].extensions)  # no reasonCode on the entry
    path = tmp_path / "other-tool.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    root = ["--trust", str(pki / "ca.crt"), "--pki", str(tmp_path / "no-pki")]
    doc = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(path), "--json"])
    assert doc.exit_code == 0, doc.output
    (entry,) = json.loads(doc.stdout)["revoked"]
    assert entry["reason"] == "unspecified"
    said = CliRunner().invoke(cli, ["verify", str(image), *root, "--crl", str(path)])
    assert f"is revoked by {path} since" in said.stderr and "(unspecified)" in said.stderr
    # publish's gate reports it in the same words (Revoked: publish list, its refusal)
    from trustboot.publish.revocation import Revoked
    gate = Revoked("signer", signer.serial_number, None, None, str(path), by_crl=True)
    assert gate.to_json()["reason"] == "unspecified" and "for unspecified" in gate.describe()


def test_a_deeply_nested_signed_attribute_is_skipped_as_ipxe_skips_it(
        corpus: Corpus, tmp_path: Path) -> None:
    """An extra signed attribute of 2000 nested SEQUENCEs: iPXE skips signed attributes
    whole, and so does trustboot's reader (no recursion into them: decoded, it would
    reach Python's limit, exit 70). The strict reader refuses the nesting: a warning."""
    from asn1crypto import cms, core

    from trustboot.cms.sign import der_tlv

    case = corpus.case("si-signed-attrs-over-image")
    image = tmp_path / "image"
    image.write_bytes((corpus.directory / case.image).read_bytes())
    info = cms.ContentInfo.load((corpus.directory / f"{case.image}.sig").read_bytes())
    si = info["content"]["signer_infos"][0]
    deep = b"\x05\x00"
    for _ in range(2000):
        deep = der_tlv(0x30, deep)
    si["signed_attrs"] = cms.CMSAttributes([
        *si["signed_attrs"], cms.CMSAttribute({"type": "1.2.3.4",
                                               "values": [core.Any.load(deep)]})])
    (tmp_path / "image.sig").write_bytes(info.dump(force=True))
    at = corpus.at(case).isoformat()
    result = CliRunner().invoke(cli, ["verify", str(image), "--at", at,
                                      "--trust", str(corpus.root)])
    assert result.exit_code == 0, result.output
    assert "warning: the signature is not strict DER (nesting too deep)" in result.output
    result = CliRunner().invoke(cli, ["verify", str(image), "--at", at,
                                      "--trust", str(corpus.root), "--strict"])
    assert result.exit_code == 4, result.output
    assert "nesting too deep" in result.output
