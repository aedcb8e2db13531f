"""A `ca init` that fails leaves nothing it made: no directory it created, no file it
wrote, no record of token keys it never generated; what was there before stays."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.keys.softhsm import PIN, Token, token_objects
from trustboot.ca.store import CertificateAuthority
from trustboot.cli.main import cli
from trustboot.fsutil import locked

from .test_crash import CRASHPOINT


def _tree(path: Path) -> dict[str, int]:
    """Every entry under ``path`` (relative) with its mode, for before/after comparisons."""
    return {str(p.relative_to(path)): p.lstat().st_mode for p in sorted(path.rglob("*"))}


def _init(pki: Path, secrets: Path, passphrase: str = "ca.pass",
          *extra: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                 "--passphrase-file", str(secrets / passphrase), *extra])
    return r.exit_code, r.output


@pytest.fixture
def short_pass(secrets_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    (d / "short.pass").write_text("short\n")
    (d / "short.pass").chmod(0o600)
    (d / "ca.pass").write_bytes((secrets_dir / "ca.pass").read_bytes())
    (d / "ca.pass").chmod(0o600)
    return d


def test_a_refused_passphrase_leaves_no_directory_it_created(short_pass: Path,
                                                             tmp_path: Path) -> None:
    """The passphrase is refused after the pki (and its missing parents) were made: all
    of them go again; the parent that was there stays."""
    code, out = _init(tmp_path / "new" / "deeper" / "pki", short_pass, "short.pass")
    assert code == 3 and "shorter than" in out, out
    assert not (tmp_path / "new").exists()
    # and a passphrase file that is not there: the same
    code, out = _init(tmp_path / "other" / "pki", short_pass, "missing.pass")
    assert code == 3 and "missing.pass" in out, out
    assert not (tmp_path / "other").exists() and tmp_path.is_dir()


@pytest.mark.parametrize("contents", [{}, {"README.md": b"# our pki\n",
                                           ".gitignore": b"private/\n"}])
def test_a_pki_directory_that_existed_is_kept_as_it_was(
        contents: dict[str, bytes], short_pass: Path, tmp_path: Path) -> None:
    """An empty directory given as the pki (or one with a README, as the repository ships
    pki/) is never removed, and nothing is left in it; a later init with a good
    passphrase then succeeds there."""
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o750)
    for name, data in contents.items():
        (pki / name).write_bytes(data)
    before = _tree(pki)
    code, out = _init(pki, short_pass, "short.pass")
    assert code == 3, out
    assert pki.is_dir() and _tree(pki) == before
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == contents
    code, out = _init(pki, short_pass)
    assert code == 0, out
    assert CertificateAuthority.open(pki).check() == []


def _term_at(pki: Path, secrets: Path, crash_at: int, count: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRASH_AT": str(crash_at), "CRASH_SIGNAL": "SIGTERM"}
    if count is not None:
        env["CRASH_COUNT_FILE"] = str(count)
    return subprocess.run(
        [sys.executable, str(CRASHPOINT), "ca", "init", "--key-type", "ec-p256", "--pki",
         str(pki), "--passphrase-file", str(secrets / "ca.pass")],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=Path(__file__).resolve().parents[2])


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True])
def test_init_stopped_at_every_commit_point_undoes_what_it_made(
        existing: bool, secrets_dir: Path, tmp_path: Path) -> None:
    """SIGTERM (an operator's Ctrl-C, a CI runner's timeout) at any commit point of `ca
    init` before the index is written: every file and directory the run made is gone, and
    a directory that was there keeps exactly what it held. From the index on the CA
    exists and stays."""
    probe = tmp_path / "probe"
    count = tmp_path / "count"
    r = _term_at(probe, secrets_dir, 0, count)
    assert r.returncode == 0, r.stderr
    points = int(count.read_text())
    assert points >= 10
    undone = 0
    for k in range(1, points + 1):
        top = tmp_path / f"k{k}"
        pki = top / "pki"
        if existing:
            pki.mkdir(parents=True, mode=0o755)
            (pki / "README.md").write_text("kept\n")
        before = _tree(top)
        r = _term_at(pki, secrets_dir, k)
        assert r.returncode == -15, (k, r.stderr)
        if CertificateAuthority.exists(pki):
            problems = CertificateAuthority.open(pki).check()
            assert all("lacks the last 1 entry (init)" in p for p in problems), (k, problems)
            continue
        undone += 1
        if existing:
            assert _tree(top) == before, k
        else:
            assert not top.exists() or _tree(top) == {}, (k, _tree(top))
            assert not pki.exists(), k
    assert undone >= 8, "expected most commit points before the index"


def _leftovers(pki: Path) -> dict[str, bytes]:
    """What a killed `ca init` leaves in ``pki`` (no index): files under init's names."""
    files = {"config.json": b"{}\n", "crl.pem": b"a killed run's CRL\n",
             "log.jsonl": b"", "private/ca.key": b"a killed run's key\n"}
    pki.mkdir(parents=True, mode=0o755)
    (pki / "private").mkdir(mode=0o700)
    for rel, data in files.items():
        (pki / rel).write_bytes(data)
    return files


@pytest.mark.slow
def test_init_stopped_after_setting_leftovers_aside_puts_them_back(
        secrets_dir: Path, tmp_path: Path) -> None:
    """A pki holding a killed init's leftovers: init moves them to private/.abandoned/
    before writing its own files under those names. Stopped at any point before its
    index, it puts them back where they were (they stayed in .abandoned/, so a failed run
    had changed the directory); the next init sets them aside again."""
    probe = tmp_path / "probe" / "pki"
    _leftovers(probe)
    count = tmp_path / "count"
    r = _term_at(probe, secrets_dir, 0, count)
    assert r.returncode == 0, r.stderr
    assert any((probe / "private" / ".abandoned").iterdir())
    undone = 0
    for k in range(1, int(count.read_text()) + 1):
        pki = tmp_path / f"k{k}" / "pki"
        files = _leftovers(pki)
        before = _tree(pki)
        r = _term_at(pki, secrets_dir, k)
        assert r.returncode == -15, (k, r.stderr)
        if CertificateAuthority.exists(pki):
            continue
        undone += 1
        assert _tree(pki) == before, k
        assert {rel: (pki / rel).read_bytes() for rel in files} == files, k
    assert undone >= 8, "expected most commit points before the index"


def test_a_waiter_relocks_a_lock_file_its_holder_removed(tmp_path: Path) -> None:
    """A failed init removes the .lock it created while holding it: a run waiting on that
    lock must then lock the file the path names (made anew), not the removed one, or a
    third run would get a lock of its own and both would write at once."""
    lock = tmp_path / ".lock"
    release = threading.Event()
    acquired = threading.Event()
    held_by_waiter: list[bool] = []

    def holder() -> None:
        with locked(lock):
            acquired.set()
            release.wait(10)
            lock.unlink()

    def waiter() -> None:
        with locked(lock):
            # a third opener of the path must find it locked now
            import fcntl

            fd = os.open(lock, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_by_waiter.append(False)
            except BlockingIOError:
                held_by_waiter.append(True)
            finally:
                os.close(fd)

    first = threading.Thread(target=holder)
    first.start()
    assert acquired.wait(10)
    second = threading.Thread(target=waiter)
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert held_by_waiter == [True]


def test_an_init_waiting_on_a_failed_init_that_removed_its_directory_makes_the_ca(
        tmp_path: Path) -> None:
    """A failed `ca init` removes its .lock and the pki directory it created: a second
    init that waited on that lock (it found the directory there, so it made none) makes
    the directory again and the CA in it; it failed with "cannot open lock file ...
    check the directory's permissions" (exit 1), though nothing was wrong with them."""
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    lock = pki / ".lock"
    asked = threading.Event()
    outcome: list[object] = []

    def passphrase(_what: str) -> bytes:
        asked.set()  # the waiter locks once its keys are made
        return b"correct horse battery staple"

    def waiter() -> None:
        try:
            CertificateAuthority.init(pki, passphrase, key_type="ec-p256")
            outcome.append("made")
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    with locked(lock):  # as the failed init: its cleanup under the lock, then released
        second = threading.Thread(target=waiter)
        second.start()
        assert asked.wait(10)
        time.sleep(0.3)  # the waiter is on the lock (if not yet, it finds no directory)
        lock.unlink()
        pki.rmdir()
    second.join(60)
    assert outcome == ["made"], outcome
    ca = CertificateAuthority.open(pki)
    assert ca.check() == []
    assert pki.stat().st_mode & 0o777 == 0o755


# --- PKCS#11 (SoftHSM2) ---------------------------------------------------------------------


def _token_init(pki: Path, label: str, pin: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                 "--pkcs11", f"pkcs11:token={label}", "--passphrase-env",
                                 "TB_PIN"], env={"TB_PIN": pin})
    return r.exit_code, r.output


def test_a_token_init_refused_by_the_token_leaves_no_record_and_no_pki(
        token: Token, tmp_path: Path) -> None:
    """A wrong PIN or a token name with a typo generated nothing: no pending-keys record
    (which would keep the pki and make the corrected run refuse a token it "generated in"),
    no directory; the corrected run then makes the CA."""
    before = token_objects(token)
    for label, pin, said in ((token.label, "999999", "wrong PIN"),
                             ("no-such-token", PIN, "no token matches")):
        pki = tmp_path / "new" / "pki"
        code, out = _token_init(pki, label, pin)
        assert code == 3 and said in out, out
        assert not (tmp_path / "new").exists(), out
        assert token_objects(token) == before
    code, out = _token_init(tmp_path / "new" / "pki", token.label, PIN)
    assert code == 0, out


def test_a_token_init_failing_after_its_record_removes_its_pairs_record_and_pki(
        token: Token, tmp_path: Path) -> None:
    """The token refuses the second pair (its label is taken by a pair of someone else's)
    after the first pair was made and recorded: the run's pair, its record and the pki it
    created go; the other pair and a pre-existing empty pki directory stay."""
    token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", token.label, "--keypairgen", "--key-type",
              "EC:prime256v1", "--label", "trustboot-issuing-ca", "--id", "01")
    before = token_objects(token)
    for pki, existed in ((tmp_path / "new" / "pki", False), (tmp_path / "empty", True)):
        if existed:
            pki.mkdir(mode=0o755)
        code, out = _token_init(pki, token.label, PIN)
        assert code == 3 and "already holds objects labelled" in out, out
        assert token_objects(token) == before
        if existed:
            assert pki.is_dir() and list(pki.iterdir()) == []
        else:
            assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_init_stopped_while_generating_its_keys_leaves_nothing(secrets_dir: Path,
                                                               tmp_path: Path) -> None:
    """SIGTERM while the RSA-4096 keys are being generated (the pki exists, nothing is
    locked or written yet): the directories the run created go."""
    import signal
    import time

    top = tmp_path / "new"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustboot", "ca", "init", "--pki", str(top / "pki"),
         "--passphrase-file", str(secrets_dir / "ca.pass")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 60
    while not (top / "pki").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == -15, err
    assert not top.exists()
