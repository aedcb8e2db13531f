"""The suite's guard (tests/conftest.py): a test that leaves a thread or a child process
running, a signal handler changed or a signal blocked fails, and the tests after it get
the state back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LEAKY = '''
import signal
import subprocess
import threading

STOP = threading.Event()
CHILD = []


def test_leaves_a_thread():
    threading.Thread(target=STOP.wait, args=(60,), daemon=True, name="left-here").start()


def test_leaves_a_process():
    CHILD.append(subprocess.Popen(["sleep", "60"]))


def test_reaps_its_process():
    subprocess.run(["true"], check=True)


def test_leaves_a_handler():
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def test_leaves_a_signal_blocked():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])


def test_joins_its_thread():
    t = threading.Thread(target=STOP.wait, args=(0.1,))
    t.start()


def test_after_them_the_state_is_back():
    STOP.set()  # the thread left above may end now
    CHILD[0].kill()
    CHILD[0].wait()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
'''


def test_leaks_fail_the_test_that_made_them(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    # the suite's conftest loaded as a plugin, around a test file outside the suite
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", "-rE", "--rootdir", str(tmp_path), str(tmp_path / "test_leaky.py")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "7 passed, 4 errors" in out, out
    assert "test_leaves_a_thread left behind: thread 'left-here' still running" in out
    assert "test_leaves_a_process left behind: process " in out and "(sleep) still" in out
    assert "test_leaves_a_handler left behind: SIGUSR1 handler changed" in out
    assert "test_leaves_a_signal_blocked left behind: blocked signals changed" in out
    for clean in ("test_joins_its_thread", "test_reaps_its_process",
                  "test_after_them_the_state_is_back"):
        assert f"{clean} left behind" not in out, out
