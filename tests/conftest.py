"""Shared fixtures: capability checks that skip with a visible reason."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.keys.softhsm import Token, make_token
from tests.procs import running_children
from trustboot.fsutil import ensure_private_dir


@pytest.fixture(scope="session", autouse=True)
def _private_build_caches(tmp_path_factory: pytest.TempPathFactory,
                          pytestconfig: pytest.Config) -> Iterator[None]:
    """No test writes into the user's real cache (~/.cache/trustboot).

    trustboot's default cache (TRUSTBOOT_CACHE_DIR) and the real-iPXE harness cache
    (TRUSTBOOT_TEST_CACHE, unless set explicitly) live under pytest's own per-user temp
    root (0700, checked by pytest), shared by later sessions so real iPXE builds are not
    redone every run; with --basetemp they live in that session's temp dir.
    """
    base = tmp_path_factory.getbasetemp()
    root = (base if pytestconfig.option.basetemp else base.parent) / "trustboot-cache"
    ensure_private_dir(root)
    patch = pytest.MonkeyPatch()
    patch.setenv("TRUSTBOOT_CACHE_DIR", str(root / "default"))
    if not os.environ.get("TRUSTBOOT_TEST_CACHE"):
        ensure_private_dir(root / "tests")
        patch.setenv("TRUSTBOOT_TEST_CACHE", str(root / "tests"))
    yield
    patch.undo()


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    """A fresh SoftHSM2 token per test (skipped, saying what is missing, without SoftHSM2
    or python-pkcs11); SOFTHSM2_CONF and TRUSTBOOT_PKCS11_MODULE point at it for
    in-process runs too."""
    tok = make_token(tmp_path / "hsm")
    for key, value in tok.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TRUSTBOOT_PKCS11_MODULE", str(tok.module))
    yield tok


# What a test may not leave behind for the tests after it (see pytest_runtest_teardown).
_WATCHED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                    signal.SIGPIPE, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGTSTP, signal.SIGTTOU)
# How long a thread or child process told to stop in a teardown gets to end before it
# counts as left.
_GRACE = 5.0


# Threads a long-lived fixture started from inside a test (a session server restarted by
# the test that replaced it): theirs, not the test's.
_KEPT: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def keep_fixture_threads(name: str) -> None:
    """The running threads called ``name`` belong to a fixture that outlives the test that
    (re)started them: the guard below does not count them as left behind."""
    _KEPT.update(t for t in threading.enumerate() if t.name == name)


def _process_state() -> dict[str, Any]:
    return {"threads": set(threading.enumerate()),
            "handlers": {s: signal.getsignal(s) for s in _WATCHED_SIGNALS},
            "mask": signal.pthread_sigmask(signal.SIG_BLOCK, []),
            "children": running_children()}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    result = yield
    # after setup: the fixtures' own threads (a session's servers) are part of the state
    item.stash[_STATE] = _process_state()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test that leaves a thread or a child process running, a signal handler or
    disposition changed, or a signal blocked fails here, and the state is put back: each
    broke a later test in a way that pointed elsewhere (a blocked accept() thread stopped
    `sign` from forking; an inherited ignored SIGINT hung a prompt test)."""
    result = yield
    before = item.stash.get(_STATE, None)
    if before is None:  # setup failed: the test never ran
        return result
    now = _process_state()
    problems = []
    deadline = time.monotonic() + _GRACE
    for thread in now["threads"] - before["threads"] - set(_KEPT):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            problems.append(f"thread {thread.name!r} still running")
    # a child process (a server, a make, a QEMU) still running: it holds ports, files or
    # namespaces the next tests use, and a later "nothing left" check sees it
    left = {pid: name for pid, name in now["children"].items()
            if pid not in before["children"]}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        running = running_children()
        left = {pid: name for pid, name in left.items() if pid in running}
    for pid, name in left.items():
        problems.append(f"process {pid} ({name}) still running")
    for signum, handler in before["handlers"].items():
        if now["handlers"][signum] != handler:
            problems.append(f"{signal.Signals(signum).name} handler changed "
                            f"({handler!r} -> {now['handlers'][signum]!r})")
            signal.signal(signum, handler)
    if now["mask"] != before["mask"]:
        problems.append(f"blocked signals changed ({sorted(before['mask'])} -> "
                        f"{sorted(now['mask'])})")
        signal.pthread_sigmask(signal.SIG_SETMASK, before["mask"])
    if problems:
        pytest.fail(f"{item.nodeid} left behind: {'; '.join(problems)}", pytrace=False)
    return result


_STATE = pytest.StashKey[dict[str, Any]]()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces / raw sockets); CI runs as root")


def dir_of_nobody(path: Path) -> Path:
    """A new 0755 directory owned by uid 65534: another local user's (skips unless root)."""
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another uid needs root (CI runs as root)")
    path.mkdir(mode=0o755)
    os.chown(path, 65534, 65534)
    return path


def give_group_to_another_user(path: Path) -> None:
    """Give ``path`` to gid 65534 (nogroup, nobody's), so its group write lets another
    user in: group write of our own user-private group is no one else's and passes
    (trustboot.writers). Skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user's group needs root (CI runs as root)")
    os.chown(path, -1, 65534, follow_symlinks=False)


def as_nobody(*argv: str, cwd: Path) -> None:
    """Run ``argv`` as uid/gid 65534 in ``cwd`` (entered as root first, so the directories
    above it need not be open to nobody)."""
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                   check=True, cwd=cwd)


def call_as_nobody(run: Callable[[], object]) -> str:
    """``run()`` in a forked child as uid/gid 65534, another local user (root only): "ok",
    or what it raised as "Type: message"."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                run()
                said = "ok"
            except Exception as exc:  # reported to the parent
                said = f"{type(exc).__name__}: {exc}"
            os.write(write_fd, said.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        said = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return said


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name} (Debian package {package}); .ci/run installs it")
    return path


def sweep_clock_between(monkeypatch: pytest.MonkeyPatch, old: Sequence[Path],
                        young: Sequence[Path] = ()) -> None:
    """The stale-temp sweep (fsutil.remove_stale_temps) judges age by st_ctime, which no
    test can set back: its clock is moved instead, so that ``old`` (made before) are an
    hour old and more, and ``young`` (changed now, after them) are not."""
    import types

    import trustboot.fsutil as fsutil

    time.sleep(0.01)
    for path in young:
        os.utime(path, follow_symlinks=False)  # its ctime: now
    last_old = max(os.stat(p, follow_symlinks=False).st_ctime for p in old)
    first_young = min((os.stat(p, follow_symlinks=False).st_ctime for p in young),
                      default=last_old + 1.0)
    assert last_old < first_young
    at = (last_old + first_young) / 2 + fsutil.STALE_TMP_SECONDS
    monkeypatch.setattr(fsutil, "time", types.SimpleNamespace(
        time=lambda: at, monotonic=time.monotonic, sleep=time.sleep))
