"""Signatures begun ahead (cms.forked.SignAhead): made in forked processes while the
signer and the targets are still being checked, taken only once every check passed and
only for the signer's own key; the same bytes as signing afterwards."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.cms.pki import PASSPHRASE, Material, ec_key, make_material, rsa_key
from tests.procs import count_forks
from trustboot import secrets
from trustboot.cms import forked
from trustboot.cms import sign as cms_sign
from trustboot.cms import verify as rules
from trustboot.cms.digest import HashJob, hash_files
from trustboot.cms.workflow import sign_paths
from trustboot.errors import ConfigError, VerificationError
from trustboot.keys import keyfile
from trustboot.keys.algorithms import HashAlgorithm
from trustboot.keys.keyfile import load_key, start_signing_key_load
from trustboot.keys.signer import KeySigner, load_certificates

RIGHT = secrets.constant(PASSPHRASE)
DAY = dt.timedelta(days=1)
COUNT = forked.PARALLEL_SIGN_MIN + 5


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))


def _files(directory: Path, count: int = COUNT) -> list[Path]:
    directory.mkdir(parents=True)
    files = []
    for i in range(count):
        path = directory / f"f{i:03d}.ipxe"
        path.write_bytes(b"#!ipxe\necho %d\n" % i)
        files.append(path)
    return files


def _verifies(signature: Path, image: Path, chain: Path) -> bool:
    root = load_certificates(chain, "chain")[-1].public_bytes(serialization.Encoding.DER)
    verdict = rules.verify_signature(
        signature.read_bytes(), {"sha256": hashlib.sha256(image.read_bytes()).digest()},
        trust=[rules.TrustAnchor(rules.fingerprint(root), root)],
        now=dt.datetime.now(dt.UTC))
    return verdict.failure is None


# the signers begun ahead (one per core, on 2 cores or more); the CLI hashes these few
# small files in its own thread, while the key's KDF runs (HashJob here=True)
CORES = os.cpu_count() or 1
FORKS_AHEAD = min(CORES, 8) if CORES >= 2 else 0


def _reaped(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        return False
    return True


def _sign_as_the_cli(files: list[Path], key: Path, cert: Path, chain: Path, out: Path | None,
                     *, here: bool = True, **kw: Any) -> Any:
    """As `trustboot sign` with a secret from the environment: the hashing and the key's
    unlock begun before sign_paths (``here``: as the CLI asks, little data hashed in
    this thread; else in a forked process)."""
    hashing = HashJob(files, "sha256", here=here)
    assert hashing.inline == here
    ahead = start_signing_key_load(key, RIGHT)
    return sign_paths(files, f"file:{key}", secrets=RIGHT, cert=cert, chain=chain,
                      out_dir=out, hashing=hashing, key_ahead=ahead, **kw)


@pytest.mark.parametrize("here", [True, False], ids=["hashed-here", "hashed-forked"])
@pytest.mark.parametrize("make_key", [rsa_key, ec_key], ids=["rsa", "ecdsa"])
def test_signatures_begun_ahead_are_taken_and_are_the_usual_bytes(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        make_key: Callable[[], Any], here: bool) -> None:
    if CORES < 2:
        pytest.skip("one core: nothing is signed ahead (nor in parallel)")
    key, cert, chain = material.issue(f"ahead-{make_key.__name__}-{here}", make_key())
    files = _files(tmp_path / "in")
    # without a head start: signed after the checks, by sign_many
    usual = sign_paths(files, f"file:{key}", secrets=RIGHT, cert=cert, chain=chain,
                       out_dir=tmp_path / "usual")
    taken: list[int] = []
    real_collect = forked.SignAhead.collect

    def collect(self: forked.SignAhead, got: Callable[[int, bytes], None]) -> None:
        taken.append(len(self.digests))
        real_collect(self, got)

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("signed again after the checks")

    monkeypatch.setattr(forked.SignAhead, "collect", collect)
    monkeypatch.setattr(cms_sign, "sign_many", never)
    pids = count_forks(monkeypatch)
    run = _sign_as_the_cli(files, key, cert, chain, tmp_path / "ahead", here=here)
    assert taken == [len(files)]
    assert len(pids) == FORKS_AHEAD + (0 if here else 1) and _reaped(pids)
    for before, now in zip(usual.results, run.results, strict=True):
        # PKCS#1 v1.5 and RFC 6979 ECDSA are deterministic: the same bytes either way
        assert now.signature_path.read_bytes() == before.signature_path.read_bytes()
    assert all(_verifies(r.signature_path, r.path, chain) for r in run.results[:3])
    assert not [p for p in (tmp_path / "ahead").iterdir() if p.name.startswith(".")]


def test_a_refused_signer_drops_what_was_signed_ahead(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing begins before preflight: a signer it refuses (expired) still signs nothing
    that reaches the disk, and no signing process is left."""
    now = dt.datetime.now(dt.UTC)
    key, cert, chain = material.issue("expired", rsa_key(), not_before=now - 400 * DAY,
                                      not_after=now - 2 * DAY)
    files = _files(tmp_path / "in")
    pids = count_forks(monkeypatch)
    with pytest.raises(VerificationError, match="expired"):
        _sign_as_the_cli(files, key, cert, chain, tmp_path / "out")
    assert len(pids) == FORKS_AHEAD
    assert _reaped(pids)
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "in").glob("*.sig"))


def test_a_target_refused_after_signing_began_writes_nothing(
        material: Material, tmp_path: Path) -> None:
    """A .sig that would replace the chain file the run reads (check_targets): refused
    after the signatures were begun, and none of them is written."""
    key, cert, chain = material.issue("targets", rsa_key())
    files = _files(tmp_path / "in")
    read_chain = tmp_path / "in" / "f000.ipxe.sig"
    read_chain.write_bytes(chain.read_bytes())
    with pytest.raises(ConfigError, match="--signing-chain"):
        _sign_as_the_cli(files, key, cert, read_chain, None)
    assert read_chain.read_bytes() == chain.read_bytes()
    assert [p.name for p in (tmp_path / "in").glob("*.sig")] == ["f000.ipxe.sig"]
    assert not [p for p in (tmp_path / "in").iterdir() if p.name.startswith(".")]


def test_what_a_failed_signer_process_left_is_signed_here(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert, chain = material.issue("flaky", ec_key())
    files = _files(tmp_path / "in")
    parent = os.getpid()
    real = keyfile.sign_with_key
    # SignAhead takes it from keyfile (KeySigner, which signs the rest here, has its own)
    monkeypatch.setattr(keyfile, "sign_with_key",
                        lambda k, digest, algo: os._exit(3) if os.getpid() != parent
                        and digest[0] % 5 == 0 else real(k, digest, algo))
    run = _sign_as_the_cli(files, key, cert, chain, tmp_path / "out")
    assert len(run.results) == len(files)
    assert all(_verifies(r.signature_path, r.path, chain) for r in run.results)


def test_signatures_made_with_another_key_are_not_taken(material: Material,
                                                        tmp_path: Path) -> None:
    key, cert, chain = material.issue("mine", rsa_key())
    other, _, _ = material.issue("other", rsa_key())
    files = _files(tmp_path / "in")
    hashed = hash_files(files, "sha256")
    digests = [h.digests["sha256"] for h in hashed]
    ahead = forked.SignAhead(load_key(other, RIGHT, "k"), digests, HashAlgorithm.SHA256,
                             workers=2)
    try:
        assert ahead.serves("sha256", digests)
        assert not ahead.serves("sha256", digests[1:])  # other files
        assert not ahead.serves("sha384", digests)
        signer = KeySigner(load_key(key, RIGHT, "k"), load_certificates(cert, "cert")[0],
                           load_certificates(chain, "chain"))
        report = cms_sign.preflight(signer, now=dt.datetime.now(dt.UTC))
        results = cms_sign.sign_hashed(hashed, signer, now=dt.datetime.now(dt.UTC),
                                       preflighted=report, ahead=ahead)
    finally:
        ahead.close()
    assert all(_verifies(r.signature_path, r.path, chain) for r in results)


def test_a_key_that_is_not_the_certificates_signs_nothing(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signatures begun ahead are made before the certificate is read: a key file
    that does not belong to --signing-cert is still refused (by KeySigner) and none of
    them is written."""
    key, _, chain = material.issue("the-key", rsa_key())
    _, other_cert, _ = material.issue("another-cert", rsa_key())
    files = _files(tmp_path / "in")
    pids = count_forks(monkeypatch)
    with pytest.raises(ConfigError, match="does not belong to certificate"):
        _sign_as_the_cli(files, key, other_cert, chain, tmp_path / "out")
    assert len(pids) == FORKS_AHEAD and _reaped(pids)
    assert not (tmp_path / "out").exists()


def test_large_files_are_not_waited_for_before_the_signer_is_checked(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing ahead needs every digest first: for files of more than AHEAD_MAX_BYTES in
    all, that would hold a refusal of the signer until they are all hashed. They are
    signed afterwards, as before (here the limit is lowered below the files' size)."""
    key, cert, chain = material.issue("large", rsa_key())
    files = _files(tmp_path / "in")
    monkeypatch.setattr(forked, "AHEAD_MAX_BYTES", sum(f.stat().st_size for f in files) - 1)

    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("signed ahead")

    monkeypatch.setattr(forked.SignAhead, "__init__", never)
    run = _sign_as_the_cli(files, key, cert, chain, tmp_path / "out")
    assert all(_verifies(r.signature_path, r.path, chain) for r in run.results[:3])
    assert len(run.results) == len(files)


def test_the_modules_imported_while_the_key_unlocks_are_the_signing_stacks_own() -> None:
    """While the key's KDF runs, _sign_ahead imports the modules signing needs after the
    fork. Each must exist (a renamed one would fail every run), and each must be one the
    signing stack imports anyway: the head start may move imports earlier, never add one.
    Checked in a fresh interpreter, which imports only what signing imports."""
    import subprocess
    import sys

    from trustboot.cms import workflow

    probe = ("import sys, trustboot.cli.sign, trustboot.cms.workflow, trustboot.cms.sign, "
             "trustboot.keys.signer, trustboot.ca.store; print('\\n'.join(sys.modules))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                text=True).stdout.split())
    stack = workflow._SIGNING_STACK
    assert stack and [name for name in stack if name not in loaded] == []
