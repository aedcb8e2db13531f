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


def test_an_ipv6_signer_name_depends_on_the_platform(corpus: Corpus) -> None:
    """BIOS builds of iPXE have no IPv6, so there --signer 2001:db8::10 matches nothing
    (the real-iPXE corpus test shows it); EFI builds match it; unknown: a warning."""
    case = corpus.case("signer-ip6")
    image = (corpus.directory / case.image).read_bytes()
    sig = (corpus.directory / case.sig).read_bytes()
    digests = {"sha256": hashlib.sha256(image).digest()}
    verdicts = {ipv6: verify_signature(sig, digests, trust=[corpus.anchor], now=corpus.at(case),
                                       signer_name=case.signer, ipv6=ipv6)
                for ipv6 in (None, True, False)}
    assert verdicts[None].ok and [w.rule for w in verdicts[None].warnings] == [
        "signer-name-ipv6"]
    assert verdicts[True].ok and not verdicts[True].warnings
    failure = verdicts[False].failure
    assert failure is not None and failure.rule == "signer-name" and "BIOS" in failure.message
    args = ["verify", str(corpus.directory / case.image), "--trust", str(corpus.root),
            "--at", corpus.at(case).isoformat(), "--signer", "2001:db8::10"]
    bios = CliRunner().invoke(cli, [*args, "--platform", "bios"])
    assert bios.exit_code == 4 and "[rule: signer-name]" in bios.output, bios.output
    efi = CliRunner().invoke(cli, [*args, "--platform", "efi"])
    assert efi.exit_code == 0 and "IPv6" not in efi.output, efi.output
    unknown = CliRunner().invoke(cli, args)
    assert unknown.exit_code == 0 and "BIOS builds" in unknown.output, unknown.output
