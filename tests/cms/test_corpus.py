"""trustboot verify's verdict on every corpus case (library and CLI)."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from tests.cms import corpus as corpus_mod
from tests.cms.corpus import Corpus
from trustboot.cli.main import cli
from trustboot.cms.certinfo import IpxeVersion
from trustboot.cms.verify import digest_algorithms, verify_signature


def _names() -> list[str]:
    import tempfile
    from pathlib import Path

    # Case names only (cheap: the generator takes well under a second).
    with tempfile.TemporaryDirectory() as tmp:
        return [c.name for c in corpus_mod.generate(Path(tmp)).cases]


@pytest.mark.parametrize("name", _names())
def test_case_verdict(corpus: Corpus, name: str) -> None:
    case = corpus.case(name)
    image = (corpus.directory / case.image).read_bytes()
    sig = (corpus.directory / case.sig).read_bytes()
    version = IpxeVersion.parse(case.ipxe_version)
    digests = {h: hashlib.new(h, image).digest() for h in digest_algorithms(sig, version)}
    verdict = verify_signature(sig, digests, trust=[corpus.anchor], now=corpus.at(case),
                               signer_name=case.signer, ipxe_version=version,
                               assume_ocsp_reachable=False)
    if case.expect_ok:
        assert verdict.ok, verdict.failure
    else:
        assert verdict.failure is not None, f"{name} was accepted"
        assert verdict.failure.rule == case.rule, verdict.failure
        assert verdict.failure.remedy


@pytest.mark.parametrize("name", ["good", "flipped-image-byte", "missing-root", "empty",
                                  "signed-attributes", "wrong-signer"])
def test_case_cli(corpus: Corpus, name: str) -> None:
    case = corpus.case(name)
    args = ["verify", str(corpus.directory / case.image), "--trust", str(corpus.root),
            "--at", corpus.at(case).isoformat()]
    if case.signer:
        args += ["--signer", case.signer]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == (0 if case.expect_ok else 4), result.output
    if not case.expect_ok:
        assert f"[rule: {case.rule}]" in result.output
        assert "hint:" in result.output


def test_missing_root_is_fine_when_built_in(corpus: Corpus) -> None:
    """CERT=root.crt (modelled by --cert) supplies the bytes the signature lacks."""
    case = corpus.case("missing-root")
    args = ["verify", str(corpus.directory / case.image), "--trust", str(corpus.root),
            "--cert", str(corpus.root), "--at", corpus.at(case).isoformat()]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
