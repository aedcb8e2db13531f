"""Signals that end a run (SIGTERM, SIGINT, SIGHUP) unwind it, so every cleanup runs.

By default SIGTERM and SIGHUP end a Python process at once: no ``finally`` runs, so a
temporary work tree (which may hold a client key) and a running make would be left behind.
Inside :func:`cleanup_on_signals` each of them raises :class:`Interrupted` instead, which
unwinds through every ``finally``/``with``; at the outermost block the previous disposition
is restored and the signal delivered again, so the process still ends the way its sender
meant (SIGTERM: dies of it, exit 143 in a shell; SIGINT: KeyboardInterrupt), only after the
cleanup. The CLI wraps every command in it; library entry points that create secrets on
disk (an iPXE build) wrap themselves too, and nested blocks are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from trustboot.errors import OperationalError

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_active = False


class Interrupted(BaseException):  # like KeyboardInterrupt: not an error
    """A terminating signal arrived: unwind (cleanup runs), then let it act."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _handler(signum: int, _frame: FrameType | None) -> None:
    # Once: a second signal must not interrupt the cleanup the first one starts.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Make SIGTERM, SIGINT and SIGHUP unwind the block, then deliver the signal again.

    A signal the process ignores (``nohup``) stays ignored. Only in the main thread (where
    Python delivers signals); elsewhere, and inside an outer block, a no-op.
    """
    global _active
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Callable[[int, FrameType | None], Any] | int] = {}
    _active = True
    try:
        for s in SIGNALS:
            old = signal.getsignal(s)
            if old is None or old == signal.SIG_IGN:
                continue
            previous[s] = old
            signal.signal(s, _handler)
        yield
    except Interrupted as exc:
        _restore(previous)
        os.kill(os.getpid(), exc.signum)
        # Still here: the previous disposition handled the signal and returned.
        raise OperationalError(f"interrupted by {exc.name}; stopped after cleaning up",
                               hint="rerun the command") from None
    finally:
        _active = False
        _restore(previous)


def _restore(previous: dict[int, Callable[[int, FrameType | None], Any] | int]) -> None:
    for s, old in previous.items():
        signal.signal(s, old)
