"""`trustboot verify`: options, JSON, warnings, and iPXE's clock margin to the second."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.cms.corpus import Corpus
from trustboot.cli.main import cli
from trustboot.cms.certinfo import IpxeVersion
from trustboot.cms.verify import TIMESTAMP_ERROR_MARGIN


def _verify(corpus: Corpus, name: str, *extra: str) -> tuple[int, str, str]:
    case = corpus.case(name)
    result = CliRunner().invoke(cli, ["verify", str(corpus.directory / case.image),
                                      "--trust", str(corpus.root), *extra])
    return result.exit_code, result.stdout, result.stderr


def _signer_cert(corpus: Corpus, name: str) -> x509.Certificate:
    from asn1crypto import cms

    sig = (corpus.directory / corpus.case(name).sig).read_bytes()
    sd = cms.ContentInfo.load(sig)["content"]
    sid = sd["signer_infos"][0]["sid"].chosen
    for c in sd["certificates"]:
        tbs = c.chosen["tbs_certificate"]
        if tbs["serial_number"].native == sid["serial_number"].native:
            return x509.load_der_x509_certificate(c.chosen.dump())
    raise AssertionError("signer not found")


def test_margin_edges_to_the_second(corpus: Corpus) -> None:
    """notBefore - 12h30m is still fine, one second earlier is not; same for notAfter."""
    cert = _signer_cert(corpus, "good")
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    cases = [(nb - TIMESTAMP_ERROR_MARGIN, 0), (nb - TIMESTAMP_ERROR_MARGIN - dt.timedelta(
        seconds=1), 4), (na + TIMESTAMP_ERROR_MARGIN, 0),
        (na + TIMESTAMP_ERROR_MARGIN + dt.timedelta(seconds=1), 4)]
    # Below the signer, the issuing CA and root are valid over a wider span.
    for at, code in cases:
        exit_code, _out, err = _verify(corpus, "good", "--at", at.isoformat())
        assert exit_code == code, (at, err)
        if code:
            assert "[rule: not-yet-valid]" in err or "[rule: expired]" in err
    assert TIMESTAMP_ERROR_MARGIN == dt.timedelta(hours=12, minutes=30)


def test_json_verdict(corpus: Corpus) -> None:
    code, out, _ = _verify(corpus, "good", "--json", "--at", corpus.now.isoformat())
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True and doc["failure"] is None
    (signer,) = doc["signers"]
    assert signer["common_name"] == "boot-signer.example.org"
    assert signer["digest_algorithm"] == "sha256"
    assert len(signer["chain"]) == 3
    code, out, err = _verify(corpus, "missing-codesigning", "--json", "--at",
                             corpus.now.isoformat())
    assert code == 4
    doc = json.loads(out)
    assert doc["ok"] is False and doc["failure"]["rule"] == "code-signing"
    assert "no-eku" in doc["failure"]["certificate"]
    assert json.loads(err)["rule"] == "code-signing"


def test_ocsp_url_warns_when_the_responder_is_reachable(corpus: Corpus) -> None:
    code, _out, err = _verify(corpus, "ocsp-signer", "--at", corpus.now.isoformat(),
                              "--assume-ocsp-reachable")
    assert code == 0
    assert "warning:" in err and "OCSP" in err


def test_trust_by_fingerprint_and_untrusted(corpus: Corpus) -> None:
    root = x509.load_pem_x509_certificate(corpus.root.read_bytes())
    fpr = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    case = corpus.case("good")
    image = str(corpus.directory / case.image)
    ok = CliRunner().invoke(cli, ["verify", image, "--trust", f"sha256:{fpr}"])
    assert ok.exit_code == 0, ok.output
    other = CliRunner().invoke(cli, ["verify", image, "--trust", str(corpus.other_root)])
    assert other.exit_code == 4 and "[rule: untrusted-root]" in other.output
    both = CliRunner().invoke(cli, ["verify", image, "--trust",
                                    f"{corpus.other_root},{corpus.root}"])
    assert both.exit_code == 0, both.output


@pytest.mark.parametrize(("args", "code"), [
    (["--at", "yesterday"], 3),
    (["--ipxe-version", "banana"], 3),
    (["--sig", "/nonexistent/x.sig"], 1),
])
def test_bad_options(corpus: Corpus, args: list[str], code: int) -> None:
    exit_code, _out, err = _verify(corpus, "good", *args)
    assert exit_code == code, err
    assert "error:" in err


def test_ecdsa_depends_on_ipxe_version(corpus: Corpus) -> None:
    at = ["--at", corpus.now.isoformat()]
    assert _verify(corpus, "good-ecdsa", *at)[0] == 0
    code, _out, err = _verify(corpus, "good-ecdsa", *at, "--ipxe-version", "1.21.1")
    assert code == 4 and "[rule: unsupported-algorithm]" in err and "2.0.0" in err
    assert IpxeVersion.parse("master").rsa_pss and not IpxeVersion.parse("2.0.0").rsa_pss


def test_p521_is_not_in_ipxe(tmp_path: Path) -> None:
    """cryptography and openssl verify P-521 happily; iPXE does not."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.cms.pki import make_material

    material = make_material(tmp_path / "pki")
    key, cert, chain = material.issue("p521", ec.generate_private_key(ec.SECP521R1()))
    image = tmp_path / "img"
    image.write_bytes(b"payload")
    from trustboot import secrets
    from trustboot.cms.sign import Hashed, sign_hashed
    from trustboot.errors import VerificationError
    from trustboot.keys.ref import parse_ref
    from trustboot.keys.signer import resolve_signer

    pending = resolve_signer(parse_ref(f"file:{key}"), cert=cert, chain=chain)
    digests = {"sha256": hashlib.sha256(b"payload").digest()}
    with (pending.open(secrets.constant(b"correct horse battery")) as signer,
          pytest.raises(VerificationError) as err):  # refused before signing
        sign_hashed([Hashed(image, 7, digests)], signer, now=dt.datetime.now(dt.UTC))
    assert err.value.rule == "unsupported-algorithm"


def test_a_missing_image_is_named_not_its_signature(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "vmlinuzz"), "--trust",
                                      "sha256:" + "00" * 32])
    assert result.exit_code == 1, result.output
    assert f"cannot read image {tmp_path / 'vmlinuzz'}: no such file" in result.output
    assert ".sig" not in result.output


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing"])
@pytest.mark.parametrize("operand", ["image", "signature"])
def test_an_operand_that_is_not_a_regular_file_exits_1(tmp_path: Path, operand: str,
                                                       kind: str) -> None:
    """FILE and its .sig follow one rule (as `sign` does for FILES): missing, a FIFO or a
    directory is an I/O failure, exit 1, named as the image or the signature; never a
    hang, a usage error or a bug."""
    import os

    image, sig = tmp_path / "vmlinuz", tmp_path / "vmlinuz.sig"
    image.write_bytes(b"kernel")
    sig.write_bytes(b"\x30\x00")
    bad = image if operand == "image" else sig
    bad.unlink()
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "directory":
        bad.mkdir()
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(cli, ["verify", str(image), "--trust",
                                          "sha256:" + "00" * 32, *extra])
        assert result.exit_code == 1, result.output
        expected = ("no such file" if kind == "missing" else "not a regular file")
        assert f"cannot read {operand} {bad}: {expected}" in result.stderr
        if extra:
            assert json.loads(result.stderr)["exit_code"] == 1 and not result.stdout


def test_a_directory_as_file_is_refused_not_a_bug(tmp_path: Path) -> None:
    for path in (".", "/", str(tmp_path)):
        result = CliRunner().invoke(cli, ["verify", path, "--trust", "sha256:" + "00" * 32])
        assert result.exit_code == 1, result.output
        assert "not a regular file" in result.stderr


def test_names_from_a_hostile_certificate_reach_no_terminal_raw(tmp_path: Path) -> None:
    """Whoever makes a signature chooses its certificates' names: a common name with
    terminal escapes or a bidi override is shown escaped, in verdicts and errors alike."""
    from tests.cms.pki import PASSPHRASE, make_material, rsa_key

    material = make_material(tmp_path / "pki")
    hostile = "evil\x1b]0;owned\x07\x1b[2J\u202ename"
    key, cert, chain = material.issue(hostile, rsa_key())
    image = tmp_path / "img.bin"
    image.write_bytes(b"boot me\n")
    signed = CliRunner().invoke(cli, [
        "sign", str(image), "--key", f"file:{key}", "--cert", str(cert), "--chain", str(chain),
        "--passphrase-env", "TB_HOSTILE_PASS"], env={"TB_HOSTILE_PASS": PASSPHRASE.decode()})
    assert signed.exit_code == 0, signed.output
    other = make_material(tmp_path / "other")
    for trust, code in ((material.directory / "root.pem", 0),
                        (other.directory / "root.pem", 4)):
        for extra in ((), ("--json",), ("--signer", "nobody")):
            r = CliRunner().invoke(cli, ["verify", str(image), "--trust", str(trust), *extra])
            want = 4 if extra and extra[0] == "--signer" else code
            assert r.exit_code == want, r.output
            text = r.stdout + r.stderr
            assert not any(c in text for c in "\x1b\x07\u202e"), text
            if want == 0:
                assert "evil\\x1b]0;owned\\x07" in text.replace("\\\\", "\\")


def test_a_trust_option_naming_no_anchor_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--trust "$ROOT"` with ROOT unset (a fork's CI job gets no secrets) fell back to
    the CA home in the working directory, which such a job controls: it verified (exit
    0). An explicit --trust that names nothing is an error; no --trust still means the
    CA home's root."""
    from trustboot import secrets
    from trustboot.ca.store import CertificateAuthority

    pw = secrets.constant(b"verify trust passphrase")
    CertificateAuthority.init(tmp_path / "pki", pw, key_type="ec-p256")[0].issue(
        "codesign", "s", pw, pw, key_type="ec-p256")
    image = tmp_path / "img"
    image.write_bytes(b"kernel")
    monkeypatch.chdir(tmp_path)
    signed = CliRunner().invoke(cli, ["sign", "img", "--key", "s", "--passphrase-env", "PW"],
                                env={"PW": "verify trust passphrase"})
    assert signed.exit_code == 0, signed.output
    assert CliRunner().invoke(cli, ["verify", "img"]).exit_code == 0
    for value in ("", ",", " , "):
        result = CliRunner().invoke(cli, ["verify", "img", "--trust", value])
        assert result.exit_code == 3, (value, result.output)
        assert "--trust names no trust anchor" in result.output
