"""A hostile .sig full of certificates costs little to refuse, and each certificate of a
signature is parsed once per verification.

`origin check` and the release read-back judge .sig files an origin serves: before the cap,
a 4 MiB signature of ~12,000 small self-signed certificates cost ~30 s of CPU to judge.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cms.corpus import Corpus, children, der, make_cert, seq, tlv
from trustboot.cli.main import cli
from trustboot.cms import certinfo
from trustboot.cms import verify as rules
from trustboot.cms.verify import MAX_CERTIFICATES, digest_algorithms, verify_signature


def _with_certificates(sig: bytes, extra: list[bytes]) -> bytes:
    """``sig`` with ``extra`` appended to its certificates field."""
    content_type, explicit = children(sig)
    version, algs, encap, certs, *rest = children(children(explicit)[0])
    certs = tlv(0xA0, b"".join(children(certs)) + b"".join(extra))
    return seq(content_type, tlv(0xA0, seq(version, algs, encap, certs, *rest)))


def _junk(count: int) -> list[bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return [der(make_cert(f"junk {i}", key, None, not_before=now - dt.timedelta(days=1),
                          not_after=now + dt.timedelta(days=1)))
            for i in range(count)]


def _judge(corpus: Corpus, sig: bytes) -> rules.Verdict:
    case = corpus.case("good")
    image = (corpus.directory / case.image).read_bytes()
    digests = {h: hashlib.new(h, image).digest() for h in digest_algorithms(sig)}
    return verify_signature(sig, digests, trust=[corpus.anchor], now=corpus.at(case))


def _good(corpus: Corpus) -> bytes:
    return (corpus.directory / corpus.case("good").sig).read_bytes()


def test_up_to_the_cap_is_judged_as_ipxe_would(corpus: Corpus) -> None:
    sig = _good(corpus)
    assert len(children(children(children(children(sig)[1])[0])[3])) == 3
    verdict = _judge(corpus, _with_certificates(sig, _junk(MAX_CERTIFICATES - 3)))
    assert verdict.ok, verdict.failure


def test_one_more_than_the_cap_is_refused_naming_the_count(corpus: Corpus) -> None:
    verdict = _judge(corpus, _with_certificates(_good(corpus), _junk(MAX_CERTIFICATES - 2)))
    assert verdict.failure is not None
    assert verdict.failure.rule == "too-many-certificates"
    assert f"{MAX_CERTIFICATES + 1} certificates" in verdict.failure.message


def test_a_4_mib_signature_of_certificates_is_refused_quickly(
        corpus: Corpus, tmp_path: Path) -> None:
    junk = _junk(16)
    per = sum(len(j) for j in junk)
    sig = _with_certificates(_good(corpus), junk * ((4 << 20) // per - 1))
    assert len(sig) <= rules.MAX_SIGNATURE_SIZE
    started = time.process_time()
    verdict = _judge(corpus, sig)
    assert time.process_time() - started < 2  # ~30 s of CPU before the cap
    assert verdict.failure is not None and verdict.failure.rule == "too-many-certificates"
    # The command names the file and the count, and exits 4 (verification failed).
    image = tmp_path / "boot.ipxe"
    image.write_bytes((corpus.directory / corpus.case("good").image).read_bytes())
    (tmp_path / "boot.ipxe.sig").write_bytes(sig)
    result = CliRunner().invoke(cli, ["verify", str(image), "--trust", str(corpus.root),
                                      "--at", corpus.at(corpus.case("good")).isoformat()])
    assert result.exit_code == 4, result.output
    count = len(children(children(children(children(sig)[1])[0])[3]))
    assert f"{count} certificates" in result.output
    assert "boot.ipxe" in result.output


def test_each_certificate_is_parsed_once_per_verification(
        corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    sig = _with_certificates(_good(corpus), _junk(5))  # bytes no earlier test judged
    calls: list[bytes] = []
    real = certinfo.parse_certificate

    def counting(der_bytes: bytes, *args: object, **kw: object) -> object:
        calls.append(der_bytes)
        return real(der_bytes, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rules, "parse_certificate", counting)
    assert _judge(corpus, sig).ok
    assert len(calls) == 8, "digest_algorithms() and verify_signature() each parsed them"


def test_a_shared_parse_is_not_changed_by_a_verification(corpus: Corpus) -> None:
    """The second verification of the same bytes gets its own chains: one built with a
    CERT= certificate does not leak into one without it."""
    case = corpus.case("good")
    image = (corpus.directory / case.image).read_bytes()
    sig = _good(corpus)
    inter_and_leaf = children(children(children(children(sig)[1])[0])[3])
    without_root = [c for c in inter_and_leaf if hashlib.sha256(c).digest()
                    != corpus.anchor.sha256]
    content_type, explicit = children(sig)
    version, algs, encap, _certs, *rest = children(children(explicit)[0])
    stripped = seq(content_type, tlv(0xA0, seq(version, algs, encap,
                                               tlv(0xA0, b"".join(without_root)), *rest)))
    digests = {h: hashlib.new(h, image).digest() for h in digest_algorithms(stripped)}
    with_cert = verify_signature(stripped, digests, trust=[corpus.anchor],
                                 now=corpus.at(case), extra_certs=[corpus.root_der])
    assert with_cert.ok, with_cert.failure
    assert len(with_cert.signers[0].chain) == 3
    alone = verify_signature(stripped, digests, trust=[corpus.anchor], now=corpus.at(case))
    assert alone.failure is not None and alone.failure.rule == "root-missing"
    again = verify_signature(stripped, digests, trust=[corpus.anchor], now=corpus.at(case),
                             extra_certs=[corpus.root_der])
    assert again.ok and again.signers == with_cert.signers
