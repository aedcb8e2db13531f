"""One run of trustboot (a command, a sign_paths call) and what it does once: a PKCS#11
module initialised once although the run resolves the key, reads its certificate and logs
in to sign in separate steps; an output directory swept for stale temp files once
although several steps write into it.

Outside a run (a thread the run started, a caller of the library that opened none),
nothing is kept or skipped: each step does what it needs, as if it were alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from contextvars import ContextVar


class _Run:
    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.done: set[str] = set()


_current: ContextVar[_Run | None] = ContextVar("trustboot_run", default=None)


@contextlib.contextmanager
def run_scope() -> Iterator[None]:
    """A run: what :func:`keep_for_run` keeps inside this block is released when it ends;
    a run inside another is part of the outer one."""
    if _current.get() is not None:
        yield
        return
    with ExitStack() as stack:
        token = _current.set(_Run(stack))
        try:
            yield
        finally:
            _current.reset(token)


def first_in_run(key: str) -> bool:
    """Whether ``key`` is seen for the first time in this run (always, outside a run)."""
    run = _current.get()
    if run is None:
        return True
    if key in run.done:
        return False
    run.done.add(key)
    return True


def keep_for_run(key: str, enter: Callable[[], AbstractContextManager[object]]) -> None:
    """Enter ``enter()`` once per run under ``key`` and exit it when the run ends; outside
    a run, nothing."""
    run = _current.get()
    if run is None or key in run.done:
        return
    run.stack.enter_context(enter())
    run.done.add(key)
