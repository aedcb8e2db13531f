"""The corpus judged by a real iPXE under QEMU: it must agree with trustboot verify.

Needs TRUSTBOOT_IPXE_SRC (an iPXE source tree) and QEMU; skipped with the reason otherwise.
One build trusting the corpus root (the build also embeds the root with CERT=, so the
missing-root case passes there, as `trustboot verify --cert root.pem` says).
Cases share a boot when they share a client clock,
except those whose verdict depends on iPXE's certificate store being fresh (iPXE
remembers every certificate it has parsed and every chain it has validated, so a missing
intermediate or root seen earlier in the same boot would be found): those boot alone.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import pytest

from tests.cms.corpus import Case, Corpus
from trustboot.cms.certinfo import IpxeVersion
from trustboot.cms.verify import TrustAnchor, digest_algorithms, verify_signature

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]
VERDICT = re.compile(r"^VERDICT (\S+) (ok|fail)\s*$", re.MULTILINE)


def _trustboot_verdict(corpus: Corpus, case: Case) -> bool:
    image = (corpus.directory / case.image).read_bytes()
    sig = (corpus.directory / case.sig).read_bytes()
    version = IpxeVersion.parse(case.ipxe_version)
    digests = {h: hashlib.new(h, image).digest() for h in digest_algorithms(sig, version)}
    # The test build has the root in CERT= too (trustboot.ipxe builds embed their roots),
    # so it is judged as `trustboot verify --cert root.pem` would.
    # The test build is a BIOS one (ipxe.lkrn): no IPv6.
    return verify_signature(sig, digests, trust=[TrustAnchor(corpus.anchor.sha256)],
                            now=corpus.at(case), signer_name=case.signer,
                            extra_certs=[corpus.root_der], ipxe_version=version,
                            assume_ocsp_reachable=False, ipv6=False).ok


def _expected(case: Case) -> bool:
    """The BIOS test build's verdict the corpus predicts."""
    return case.bios_ok if case.bios_ok is not None else case.expect_ok_with_builtin_root


def _script(cases: list[Case]) -> str:
    lines = ["#!ipxe"]
    for c in cases:
        signer = f"--signer {c.signer} " if c.signer else ""
        lines.append(
            f"imgfetch tftp://10.0.2.2/{c.image} && imgfetch tftp://10.0.2.2/{c.sig} && "
            f"imgverify {signer}{c.image} {c.sig} && echo VERDICT {c.name} ok || "
            f"echo VERDICT {c.name} fail")
        lines.append("imgfree")
    lines.append("echo TRUSTBOOT-DONE")
    return "\n".join(lines) + "\n"


def test_real_ipxe_agrees_with_trustboot_verify(corpus: Corpus) -> None:
    try:
        from tests.ipxe_qemu import boot, build_test_ipxe, ipxe_src_or_skip
    except ImportError as exc:
        pytest.skip(f"the QEMU harness tests/ipxe_qemu.py is not available: {exc}")
    ipxe_src_or_skip()
    lkrn = build_test_ipxe([corpus.root])

    cases = [c for c in corpus.cases if c.ipxe]
    groups: dict[tuple[int, str], list[Case]] = defaultdict(list)
    for c in cases:
        groups[(c.at_offset_s, c.name if c.isolate else "")].append(c)

    disagreements: list[str] = []
    for (offset, _), group in sorted(groups.items()):
        files: dict[str, bytes] = {}
        for c in group:
            files[c.image] = (corpus.directory / c.image).read_bytes()
            files[c.sig] = (corpus.directory / c.sig).read_bytes()
        console = boot(lkrn, files, _script(group), rtc=corpus.at(group[0]),
                       timeout=60 + 10 * len(group))
        seen = dict(VERDICT.findall(console))
        for c in group:
            if c.name not in seen:
                disagreements.append(f"{c.name}: no verdict from iPXE\n{console[-2000:]}")
                continue
            ipxe_ok = seen[c.name] == "ok"
            ours = _trustboot_verdict(corpus, c)
            if ipxe_ok != ours or ipxe_ok != _expected(c):
                disagreements.append(
                    f"{c.name}: iPXE {'accepts' if ipxe_ok else 'rejects'}, trustboot "
                    f"{'accepts' if ours else 'rejects'}, corpus expects "
                    f"{'ok' if _expected(c) else 'fail'}")
        for c in group:  # visible with pytest -s: what the real iPXE said, case by case
            print(f"{c.name:36} rtc+{offset:>9}s iPXE {seen.get(c.name, '?'):4} "
                  f"expected {'ok' if _expected(c) else 'fail'}")
    assert not disagreements, "\n".join(disagreements)


def test_real_efi_ipxe_matches_ipv6_signer_names_as_trustboot_does(corpus: Corpus) -> None:
    """EFI builds have IPv6: --signer with an IPv6 address goes through iPXE's
    inet6_aton(), which trustboot mirrors (strtoul words, "[...]", one "::")."""
    try:
        from tests.ipxe_qemu import boot_efi, build_test_ipxe, doubled, ipxe_src_or_skip, seen
    except ImportError as exc:
        pytest.skip(f"the QEMU harness tests/ipxe_qemu.py is not available: {exc}")
    ipxe_src_or_skip()
    efi = build_test_ipxe([corpus.root], target="bin-x86_64-efi/ipxe.efi")
    cases = [c for c in corpus.cases if c.name.startswith("signer-ip6")]
    assert len(cases) >= 8
    files = {"boot.ipxe": _script(cases).encode()}
    for c in cases:
        files[c.image] = (corpus.directory / c.image).read_bytes()
        files[c.sig] = (corpus.directory / c.sig).read_bytes()
    # Under OVMF, iPXE's serial console shows every character twice.
    console = boot_efi(efi, tftp=files, rtc=corpus.at(cases[0]),
                       timeout=150 + 10 * len(cases),
                       stop_on=("TRUSTBOOT-DONE", doubled("TRUSTBOOT-DONE")))
    verdicts = {c.name: v for c in cases for v in ("ok", "fail")
                if seen(f"VERDICT {c.name} {v}\n", console.replace("\r", ""))}
    for c in cases:
        image = (corpus.directory / c.image).read_bytes()
        sig = (corpus.directory / c.sig).read_bytes()
        ours = verify_signature(sig, {"sha256": hashlib.sha256(image).digest()},
                                trust=[TrustAnchor(corpus.anchor.sha256)], now=corpus.at(c),
                                signer_name=c.signer, extra_certs=[corpus.root_der],
                                ipv6=True).ok
        assert c.name in verdicts, f"{c.name}: no verdict from iPXE\n{console[-2000:]}"
        assert (verdicts[c.name] == "ok") == ours == c.expect_ok, (c.name, verdicts[c.name],
                                                                   ours)
