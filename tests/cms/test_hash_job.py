"""HashJob's forked hashers: what a child reports when its file moves, and that none
outlives the command that started it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.cms.pki import PASSPHRASE, Material, make_material, rsa_key
from tests.procs import child_pids, process_state
from trustboot.cms import digest
from trustboot.cms.digest import PROCESS_MIN_FILES, HashJob

ENV = {"TB_TEST_PASS": PASSPHRASE.decode()}
# sparse: read at memory speed, still seconds of hashing each
BIG = 4 << 30


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))


def _sparse(tmp_path: Path, count: int = 2) -> list[Path]:
    files = []
    for i in range(count):
        path = tmp_path / f"big{i}"
        with path.open("wb") as fh:
            fh.truncate(BIG)
        files.append(path)
    return files


@pytest.fixture
def no_other_threads() -> None:
    import threading

    deadline = time.monotonic() + 10
    while [t for t in threading.enumerate() if t is not threading.current_thread()]:
        if time.monotonic() > deadline:
            pytest.skip("threads an earlier test left running: HashJob would not fork")
        time.sleep(0.02)


@pytest.mark.usefixtures("no_other_threads")
def test_a_directory_renamed_after_its_file_was_read_is_not_an_internal_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forked hasher looked the path up again after reading it (for the file's
    stamp): a directory renamed meanwhile made that fail outside the OSError handling,
    and `sign` exited 70. The stamp is the read descriptor's: the digests stand."""
    stage = tmp_path / "stage"
    stage.mkdir()
    files = [stage / f"f{i}" for i in range(PROCESS_MIN_FILES)]
    for i, path in enumerate(files):
        path.write_bytes(b"x" * i)
    real = digest.hash_file

    def then_rename(path: Path, names: Sequence[str], *args: object,
                    **kwargs: object) -> tuple[dict[str, bytes], int]:
        out = real(path, names, *args, **kwargs)  # type: ignore[arg-type]
        if path == files[0]:  # in the child, between the read and what follows it
            stage.rename(tmp_path / "stage.moved")
        return out

    monkeypatch.setattr(digest, "hash_file", then_rename)
    job = HashJob(files, "sha256")
    assert job.processes == 1  # the forked path
    hashed = job.result()
    assert [h.digests["sha256"] for h in hashed] == [
        hashlib.sha256(b"x" * i).digest() for i in range(len(files))]


class _Interrupted(Exception):
    pass


@pytest.mark.usefixtures("no_other_threads")
def test_a_signal_while_waiting_for_the_hashers_leaves_cancel_them_to_kill(
        tmp_path: Path) -> None:
    """_collect took the children off the job before blocking on their pipes: a signal
    raised there (SIGTERM unwinds the command) left cancel() none to kill, and they
    hashed on as orphans. Here an alarm raises while result() waits."""
    before = child_pids()
    job = HashJob(_sparse(tmp_path), "sha256")
    assert job.processes == 2
    forked = child_pids() - before

    def interrupt(_signum: int, _frame: object) -> None:
        raise _Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(_Interrupted):
            job.result()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    job.cancel()
    assert child_pids() == before
    assert all(process_state(pid) is None for pid in forked)


def _hashers_of(pid: int, timeout: float = 30.0) -> set[int]:
    """The children ``pid`` forked, once it has two (its hashers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids: set[int] = set()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids.update(int(k) for k in (task / "children").read_text().split())
            except OSError:
                continue
        if len(kids) >= 2:
            return kids
        time.sleep(0.02)
    pytest.fail("the command never forked its hashers")


def _gone(pids: set[int], timeout: float = 10.0) -> bool:
    """Whether every one of ``pids`` has exited (gone, or a zombie) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [process_state(pid) for pid in pids]
        if all(state is None or state[1] == "Z" for state in states):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_hasher_outlives_an_interrupted_sign(material: Material, tmp_path: Path,
                                                how: signal.Signals) -> None:
    """SIGTERM: the command cleans up, its hashers included; SIGKILL leaves it no
    cleanup, and the kernel ends them with it (PR_SET_PDEATHSIG)."""
    key, cert, chain = material.issue(f"interrupted-{how.name}", rsa_key())
    files = _sparse(tmp_path)
    # stderr to a file: a pipe would be held open by surviving hashers
    log = tmp_path / "stderr"
    hashers: set[int] = set()
    with log.open("w") as err_out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trustboot", "sign", "--key", f"file:{key}", "--cert",
             str(cert), "--chain", str(chain), "--passphrase-env", "TB_TEST_PASS",
             *map(str, files)], stdout=subprocess.DEVNULL, stderr=err_out,
            env={**os.environ, **ENV})
    try:
        hashers = _hashers_of(proc.pid)
        proc.send_signal(how)
        proc.wait(timeout=60)
        alive = {pid: process_state(pid) for pid in hashers if not _gone({pid})}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in hashers:  # what this test caused is not left to hash on
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    err = log.read_text()
    assert proc.returncode == -how, err
    if how == signal.SIGTERM:
        assert "cleaned up" in err, err
    assert not alive, f"hashers still running after the command ended: {alive}"
    assert not list(tmp_path.glob("*.sig"))


def test_here_hashes_little_data_in_the_callers_thread_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``here``: many small files (what `sign` with a file key gets) are hashed in the
    caller's thread when result() is first asked, with no process or thread started,
    the same digests as the forked path; an error is raised on every call, the files read
    once. Large data still goes to forked processes."""
    import threading

    files = [tmp_path / f"f{i}" for i in range(PROCESS_MIN_FILES + 1)]
    for i, path in enumerate(files):
        path.write_bytes(b"y" * i)
    threads = threading.active_count()
    job = HashJob(files, "sha256", here=True)
    assert job.inline and job.processes == 0 and threading.active_count() == threads
    reads: list[Path] = []
    real = digest.hash_file

    def counted(path: Path, *args: object, **kwargs: object) -> tuple[dict[str, bytes], int]:
        reads.append(path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(digest, "hash_file", counted)
    forked = HashJob(files, "sha256").result()
    assert [h.digests for h in job.result()] == [h.digests for h in forked]
    assert job.result() is job.result() and reads == files  # read here, once
    missing = HashJob([*files, tmp_path / "gone"], "sha256", here=True)
    for _ in range(2):
        with pytest.raises(Exception, match="gone"):
            missing.result()
    missing.cancel()  # nothing to stop: no error
    (tmp_path / "big").mkdir()
    large = HashJob(_sparse(tmp_path / "big", 1), "sha256", here=True)
    try:
        assert not large.inline and large.processes == 1  # large data: forked, as before
    finally:
        large.cancel()
