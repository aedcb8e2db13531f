"""A process killed at every commit point of `ca issue` and `ca revoke` leaves a store
that loads, verifies, and accepts the same operation again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from trustboot.ca.store import ISSUING_NAME, CertificateAuthority, IssuedEntry

from .conftest import init_ca, issue

CRASHPOINT = Path(__file__).with_name("crashpoint.py")
pytestmark = pytest.mark.slow


def _run(pki: Path, secrets: Path, args: list[str], crash_at: int,
         count_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRASH_AT": str(crash_at)}
    if count_file is not None:
        env["CRASH_COUNT_FILE"] = str(count_file)
    secret = [] if args[-1] == "retire" else ["--passphrase-file", str(secrets / "ca.pass")]
    return subprocess.run(
        [sys.executable, str(CRASHPOINT), *args, "--pki", str(pki), *secret],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def small_ca(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Path:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    pki = tmp_path_factory.mktemp("crash") / "pki"
    init_ca(run, pki, secrets_dir, "--key-type", "ec-p256")
    assert issue(run, pki, secrets_dir, "codesign", "victim", "--key-type",
                 "ec-p256").exit_code == 0
    return pki


def _logged(pki: Path) -> list[tuple[str, str | None]]:
    """(op, name) of each entry of log.jsonl, in order."""
    return [(r["op"], r.get("name")) for r in map(json.loads, (pki / "log.jsonl").read_text()
                                                   .splitlines())]


OPS = {
    "issue": ["ca", "issue", "codesign", "newcert", "--key-type", "ec-p256",
              "--key-passphrase-file", "{secrets}/key.pass"],
    "revoke": ["ca", "revoke", "victim"],
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_kill_at_every_commit_point(op: str, small_ca: Path, secrets_dir: Path,
                                    tmp_path: Path) -> None:
    args = [a.format(secrets=secrets_dir) for a in OPS[op]]
    probe = tmp_path / "probe"
    shutil.copytree(small_ca, probe)
    count_file = tmp_path / "count"
    r = _run(probe, secrets_dir, args, 0, count_file)
    assert r.returncode == 0, r.stderr
    points = int(count_file.read_text())
    assert points >= 4, "expected several commit points"
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        shutil.copytree(small_ca, pki)
        r = _run(pki, secrets_dir, args, k)
        assert r.returncode == -9, (k, r.stderr)
        ca = CertificateAuthority.open(pki)  # loads
        problems = ca.check()
        # Killed between index and CRL: the index is the truth; `ca crl` catches up.
        assert all("run `trustboot ca crl`" in p for p in problems), (k, problems)
        if problems:
            fix = _run(pki, secrets_dir, ["ca", "crl"], 0)
            assert fix.returncode == 0, fix.stderr
            assert CertificateAuthority.open(pki).check() == []
        # The operation can be run again and ends in the intended state.
        again = _run(pki, secrets_dir, args, 0)
        assert again.returncode == 0 or "already" in again.stderr, (k, again.stderr)
        ca = CertificateAuthority.open(pki)
        assert ca.check() == [], (k, ca.check())
        # killed between the index commit and the log: the entry is appended anyway,
        # once (by the re-run, marked as recovered)
        target = ("issue", "newcert") if op == "issue" else ("revoke", "victim")
        assert _logged(pki).count(target) == 1, (k, _logged(pki))
        if op == "issue":
            assert ca.get("newcert").status == "valid"
            assert (pki / "private" / "newcert.key").stat().st_mode & 0o077 == 0
        else:
            assert ca.get("victim").status == "revoked"
            assert not (pki / "issued" / "victim.crt").exists()


def test_kill_init_at_every_commit_point(secrets_dir: Path, tmp_path: Path) -> None:
    args = ["ca", "init", "--key-type", "ec-p256"]
    count_file = tmp_path / "count"
    r = _run(tmp_path / "probe", secrets_dir, args, 0, count_file)
    assert r.returncode == 0, r.stderr
    points = int(count_file.read_text())
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        r = _run(pki, secrets_dir, args, k)
        assert r.returncode == -9, (k, r.stderr)
        if CertificateAuthority.exists(pki):
            # killed before the log: `ca check` says so and the next write appends it
            problems = CertificateAuthority.open(pki).check()
            assert all("lacks the last 1 entry (init)" in p for p in problems), k
            if problems:
                assert _run(pki, secrets_dir, ["ca", "crl"], 0).returncode == 0
                assert CertificateAuthority.open(pki).check() == [], k
            assert _logged(pki)[0] == ("init", None), k
            continue
        # No index yet: not a CA. A new init sets the leftovers aside and succeeds.
        again = _run(pki, secrets_dir, args, 0)
        assert again.returncode == 0, (k, again.stderr)
        assert CertificateAuthority.open(pki).check() == []
        assert (pki / "private").stat().st_mode & 0o077 == 0


# --- renew and rotations ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lifecycle_cas(small_ca: Path, tmp_path_factory: pytest.TempPathFactory,
                  secrets_dir: Path) -> dict[str, Path]:
    """The CA at each step of a root rotation: stable, begun, promoted."""
    base = tmp_path_factory.mktemp("lifecycle")
    homes = {"stable": small_ca}
    begun = base / "begun"
    shutil.copytree(small_ca, begun)
    assert _run(begun, secrets_dir, ["ca", "rotate", "root", "begin"], 0).returncode == 0
    promoted = base / "promoted"
    shutil.copytree(begun, promoted)
    r = _run(promoted, secrets_dir, ["ca", "rotate", "root", "promote", "--confirm-fleet"], 0)
    assert r.returncode == 0, r.stderr
    # a CA whose root CRL is in use (nginx ssl_crl): promote signs it again
    root_crl = base / "begun-root-crl"
    shutil.copytree(begun, root_crl)
    assert _run(root_crl, secrets_dir, ["ca", "crl", "--root"], 0).returncode == 0
    homes |= {"begun": begun, "promoted": promoted, "begun-root-crl": root_crl}
    return homes


LIFECYCLE_OPS = {
    # op: (starting home, arguments, state after)
    "renew": ("stable", ["ca", "renew", "victim"], "stable"),
    "renew-rekey": ("stable", ["ca", "renew", "victim", "--rekey", "--key-passphrase-file",
                               "{secrets}/key.pass"], "stable"),
    "rotate-issuing": ("stable", ["ca", "rotate", "issuing"], "stable"),
    "root-begin": ("stable", ["ca", "rotate", "root", "begin"], "begun"),
    "root-promote": ("begun", ["ca", "rotate", "root", "promote", "--confirm-fleet"],
                     "promoted"),
    "root-promote-root-crl": ("begun-root-crl", ["ca", "rotate", "root", "promote",
                                                 "--confirm-fleet"], "promoted"),
    "root-retire": ("promoted", ["ca", "rotate", "root", "retire"], "stable"),
}


LOGGED_AS = {"renew": "renew", "renew-rekey": "renew", "rotate-issuing": "rotate-issuing",
             "root-begin": "rotate-root-begin", "root-promote": "rotate-root-promote",
             "root-promote-root-crl": "rotate-root-promote",
             "root-retire": "rotate-root-retire"}


def _state(pki: Path) -> str:
    from trustboot.ca import rotation

    return rotation.status(CertificateAuthority.open(pki)).step


@pytest.mark.parametrize("op", sorted(LIFECYCLE_OPS))
def test_lifecycle_kill_at_every_commit_point(op: str, lifecycle_cas: dict[str, Path],
                                              secrets_dir: Path, tmp_path: Path) -> None:
    start, raw_args, end = LIFECYCLE_OPS[op]
    args = [a.format(secrets=secrets_dir) for a in raw_args]
    home = lifecycle_cas[start]
    start_state = _state(home)
    before = CertificateAuthority.open(home)
    victim_serial = before.get("victim").serial
    probe = tmp_path / "probe"
    shutil.copytree(home, probe)
    count_file = tmp_path / "count"
    r = _run(probe, secrets_dir, args, 0, count_file)
    assert r.returncode == 0, r.stderr
    points = int(count_file.read_text())
    # retire changes the index only (and index.txt beside it)
    assert points >= (2 if op == "root-retire" else 4), "expected several commit points"
    assert _state(probe) == end
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        shutil.copytree(home, pki)
        r = _run(pki, secrets_dir, args, k)
        assert r.returncode == -9, (k, r.stderr)
        ca = CertificateAuthority.open(pki)  # loads
        assert _state(pki) in (start_state, end), k  # the step happened entirely or not at all
        problems = ca.check()
        assert all("run `trustboot ca crl" in p for p in problems), (k, problems)
        assert ca.check_log().problem is None, k
        # the same command again finishes the step (or repeats a renewal)
        again = _run(pki, secrets_dir, args, 0)
        assert again.returncode == 0, (k, again.stderr)
        ca = CertificateAuthority.open(pki)
        problems = ca.check()
        if op.startswith("root-promote") or op == "rotate-issuing":
            # the re-run finished every CRL of the step (or made a whole rotation)
            assert problems == [], (k, problems)
            old_issuing = before.active_entry("issuing")
            assert ca.crl_path(old_issuing).is_file(), k
        if problems:  # killed between an index commit and its CRL: `ca crl` catches up
            assert all("run `trustboot ca crl`" in p for p in problems), (k, problems)
            assert _run(pki, secrets_dir, ["ca", "crl"], 0).returncode == 0
            ca = CertificateAuthority.open(pki)
        assert ca.check() == [], (k, ca.check())
        assert _state(pki) == end, k
        logged = [o for o, _ in _logged(pki)].count(LOGGED_AS[op]) - \
            [o for o, _ in _logged(home)].count(LOGGED_AS[op])
        # one entry per change (a renewal or an issuing CA rotation run again happens
        # again: one per certificate it made), the one a killed run owed included
        if op.startswith("renew") or op == "rotate-issuing":
            made = {"renew": "victim", "renew-rekey": "victim", "rotate-issuing": ISSUING_NAME}
            assert logged == sum(e.name == made[op] for e in ca.entries) - sum(
                e.name == made[op] for e in before.entries), (k, _logged(pki))
        else:
            assert logged == 1, (k, _logged(pki))
        for entry in ca.entries:
            if entry.key_file:
                assert (pki / entry.key_file).stat().st_mode & 0o077 == 0, entry.key_file
        current = ca.current("victim")
        assert current is not None, k
        if op.startswith("renew") or op.startswith("root-promote"):
            assert current.serial != victim_serial, k
            assert (pki / "issued" / "victim.crt").read_bytes() == current.read_cert_pem()
        if op == "root-retire":
            assert len(ca.trusted_roots()) == 1
        if op == "root-promote-root-crl":  # ca.check() held it to the new root already
            crl = x509.load_pem_x509_crl((pki / "root-crl.pem").read_bytes())
            assert crl.issuer == ca.root_cert.subject != before.root_cert.subject, k


def test_migration_of_a_v1_home_killed_at_every_commit_point(tmp_path: Path) -> None:
    """The first write to a CA home of index version 1 migrates it; a kill at any point
    leaves a home that loads (as version 1 or 2) and migrates on the next write."""
    from .test_renew import V1_CA_PASS, _v1_home

    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "ca.pass").write_bytes(V1_CA_PASS + b"\n")
    (secrets / "ca.pass").chmod(0o600)
    args = ["ca", "crl"]  # a write that does not depend on the leaves' validity
    probe = _v1_home(tmp_path / "probe")
    count_file = tmp_path / "count"
    r = _run(probe, secrets, args, 0, count_file)
    assert r.returncode == 0, r.stderr
    points = int(count_file.read_text())
    assert points >= 4
    for k in range(1, points + 1):
        pki = _v1_home(tmp_path / f"k{k}")
        keys = {p.name: p.read_bytes() for p in (pki / "private").rglob("*.key")}
        r = _run(pki, secrets, args, k)
        assert r.returncode == -9, (k, r.stderr)
        CertificateAuthority.open(pki)  # loads, whichever version it is
        again = _run(pki, secrets, args, 0)
        assert again.returncode == 0, (k, again.stderr)
        ca = CertificateAuthority.open(pki)
        assert json.loads((pki / "index.json").read_text())["version"] == 2
        assert ca.check() == [], (k, ca.check())
        assert ca.check_log().problem is None, k
        # every key of the old home is still there, byte for byte
        kept = {p.read_bytes() for p in (pki / "private").rglob("*.key")}
        assert set(keys.values()) <= kept, k


def test_revoke_killed_before_its_crl_is_finished_by_running_it_again(
        small_ca: Path, secrets_dir: Path, tmp_path: Path) -> None:
    """Killed after the index commit and before crl.pem: `ca export` refuses to hand on a
    CRL that misses the revocation, and running the same `ca revoke` again (what anyone
    does after a crash) writes the CRL instead of saying 'already revoked' and leaving it."""
    args = OPS["revoke"]
    count_file = tmp_path / "count"
    probe = tmp_path / "probe"
    shutil.copytree(small_ca, probe)
    assert _run(probe, secrets_dir, args, 0, count_file).returncode == 0
    for k in range(1, int(count_file.read_text()) + 1):
        pki = tmp_path / f"k{k}"
        shutil.copytree(small_ca, pki)
        assert _run(pki, secrets_dir, args, k).returncode == -9
        ca = CertificateAuthority.open(pki)
        if ca.get("victim").status == "revoked" and any("does not list" in p
                                                        for p in ca.check()):
            break
    else:
        pytest.fail("no commit point between the index and the CRL")
    serial = ca.get("victim").serial
    from click.testing import CliRunner

    from trustboot.cli.main import cli
    export = CliRunner().invoke(cli, ["ca", "export", "--pki", str(pki), "--out",
                                      str(tmp_path / "out")])
    assert export.exit_code == 3 and "does not list revoked victim" in export.output
    assert not (tmp_path / "out" / "crl.pem").exists()
    again = _run(pki, secrets_dir, args, 0)
    assert again.returncode == 0, again.stderr
    assert CertificateAuthority.open(pki).check() == []
    # openssl: the CRL is the issuing CA's and lists the serial
    checked = subprocess.run(["openssl", "crl", "-in", str(pki / "crl.pem"), "-CAfile",
                              str(pki / "chain.pem"), "-noout", "-text"],
                             capture_output=True, text=True, check=True)
    assert "verify OK" in checked.stderr + checked.stdout
    listed = {int(line.split(":")[1], 16) for line in checked.stdout.splitlines()
              if "Serial Number:" in line}
    assert serial in listed
    # A second run is the plain 'already revoked' again.
    assert "already revoked" in _run(pki, secrets_dir, args, 0).stderr


@pytest.fixture(scope="module")
def revoking_ca(small_ca: Path, tmp_path_factory: pytest.TempPathFactory,
                secrets_dir: Path) -> Path:
    """small_ca whose issuing CA revoked a leaf ("gone")."""
    pki = tmp_path_factory.mktemp("revoking") / "pki"
    shutil.copytree(small_ca, pki)
    args = [a.format(secrets=secrets_dir) for a in OPS["issue"]]
    made = _run(pki, secrets_dir, [*args[:3], "gone", *args[4:]], 0)
    assert made.returncode == 0, made.stderr
    assert _run(pki, secrets_dir, ["ca", "revoke", "gone"], 0).returncode == 0
    return pki


def _rotation_lab(revoking_ca: Path, secrets_dir: Path, tmp_path: Path, *,
                  key_kept: bool) -> tuple[Path, IssuedEntry, int, int]:
    """A copy of revoking_ca (its issuing CA's key removed unless ``key_kept``), its
    issuing CA, the revoked serial, and how many commit points `ca rotate issuing` has."""
    home = tmp_path / "home"
    shutil.copytree(revoking_ca, home)
    before = CertificateAuthority.open(home)
    original = before.active_entry("issuing")
    if not key_kept:  # its key moved offline: only the CRL it signed can list "gone"
        for rel in (str(original.key_file), "private/issuing-ca.key"):
            (home / rel).unlink()
    count_file = tmp_path / "count"
    probe = tmp_path / "probe"
    shutil.copytree(home, probe)
    assert _run(probe, secrets_dir, ["ca", "rotate", "issuing"], 0,
                count_file).returncode == 0
    return home, original, before.get("gone").serial, int(count_file.read_text())


def _lists(ca: CertificateAuthority, issuer: IssuedEntry, serial: int) -> bool:
    """Whether ``issuer``'s CRL in ``ca`` is signed by it and lists ``serial``."""
    crl = x509.load_pem_x509_crl(ca.crl_path(issuer).read_bytes())
    assert crl.is_signature_valid(issuer.load_cert().public_key())  # type: ignore[arg-type]
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


@pytest.mark.parametrize("key_kept", [True, False])
def test_rotate_issuing_killed_anywhere_is_finished_by_running_it_again(
        key_kept: bool, revoking_ca: Path, secrets_dir: Path, tmp_path: Path) -> None:
    """`ca rotate issuing` SIGKILLed at any commit point, then run again: a kill before
    its index commit left nothing (the re-run rotates); one after it left the new issuing
    CA active with crl.pem still the previous CA's and no crls/ file for it, and the
    re-run finishes that rotation (says so) instead of making a second issuing CA, which
    would have left the first previous CA without a CRL. Its revocation stays listed: on
    a CRL it signs (its key here), or on the one it last signed (its key gone). A kill
    at clearing the mark, the last write, left nothing owed: the re-run rotates again,
    every previous CA keeping its CRL."""
    home, original, gone, points = _rotation_lab(revoking_ca, secrets_dir, tmp_path,
                                                 key_kept=key_kept)
    args = ["ca", "rotate", "issuing"]
    finished = rerotated = 0
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        shutil.copytree(home, pki)
        assert _run(pki, secrets_dir, args, k).returncode == -9, k
        killed = CertificateAuthority.open(pki)
        committed = killed.active_entry("issuing").sha256 != original.sha256
        # killed only at clearing the unfinished mark, its last write: the rotation is
        # complete (its log entry, crl.pem, the previous CA's CRL), as when that write
        # fails; nothing is owed, so the re-run rotates again rather than answer
        # "finished" with no new CA
        complete = (committed and "rotate-issuing" in [o for o, _ in _logged(pki)]
                    and killed._check_crl() == [] and killed.crl_path(original).exists())
        again = _run(pki, secrets_dir, args, 0)
        assert again.returncode == 0, (k, again.stderr)
        assert ("finished the rotation a killed run began" in again.stdout) \
            == (committed and not complete), (k, again.stdout)
        finished += committed and not complete
        ca = CertificateAuthority.open(pki)
        made = [e for e in ca.entries if e.profile == "issuing"]
        assert len(made) == 2 + complete, (k, "one rotation, not two")
        assert [o for o, _ in _logged(pki)].count("rotate-issuing") == 1 + complete, k
        active = ca.active_entry("issuing").sha256
        assert all(ca.crl_path(e).exists() for e in made if e.sha256 != active), k
        rerotated += complete
        assert ca.check_log().problem is None, k
        assert _lists(ca, original, gone), k
        assert ca._check_crl() == [], k  # crl.pem: the new issuing CA's
        if key_kept:
            assert ca.check() == [], (k, ca.check())
    assert finished >= 3, "expected kill points after the index commit"
    assert rerotated == 1, "expected one kill point at clearing the mark"


def test_ca_crl_after_a_killed_rotation_keeps_a_keyless_previous_ca_revocations(
        revoking_ca: Path, secrets_dir: Path, tmp_path: Path) -> None:
    """`ca crl` (the other way on after a killed `ca rotate issuing`) with the previous
    issuing CA's key gone: crl.pem, still the CRL that CA last signed and the only one
    listing its revocation, is copied to crls/ before it is rewritten, as the rotation
    itself does; it was overwritten by the new CA's, and the revocation was on no CRL."""
    home, original, gone, points = _rotation_lab(revoking_ca, secrets_dir, tmp_path,
                                                 key_kept=False)
    args = ["ca", "rotate", "issuing"]
    tried = 0
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        shutil.copytree(home, pki)
        assert _run(pki, secrets_dir, args, k).returncode == -9, k
        ca = CertificateAuthority.open(pki)
        if ca.active_entry("issuing").sha256 == original.sha256 \
                or ca.crl_path(original).exists():
            continue  # not committed yet, or the previous CA's CRL is there already
        tried += 1
        assert _run(pki, secrets_dir, ["ca", "crl"], 0).returncode == 0, k
        ca = CertificateAuthority.open(pki)
        assert _lists(ca, original, gone), k
        assert ca._check_crl() == [], k  # crl.pem: the new issuing CA's
    assert tried >= 1, "expected a kill point between the commit and the previous CRL"
