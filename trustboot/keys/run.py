"""One run of trustboot (a command, a sign_paths call): resources a key scheme opens once
and shares until the run ends, e.g. a PKCS#11 module, initialised once although the run
resolves the key reference, reads the certificate and logs in to sign in separate steps.

Outside a run (a thread the run started, a caller of the library that opened none),
nothing is kept: each step opens and closes what it needs, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from contextvars import ContextVar


class _Run:
    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.kept: set[str] = set()


_current: ContextVar[_Run | None] = ContextVar("trustboot_key_run", default=None)


@contextlib.contextmanager
def key_run() -> Iterator[None]:
    """What :func:`keep_for_run` keeps inside this block is released when it ends; a run
    inside another is part of the outer one."""
    if _current.get() is not None:
        yield
        return
    with ExitStack() as stack:
        token = _current.set(_Run(stack))
        try:
            yield
        finally:
            _current.reset(token)


def keep_for_run(key: str, enter: Callable[[], AbstractContextManager[object]]) -> None:
    """Enter ``enter()`` once per run under ``key`` and exit it when the run ends; outside
    a run, nothing."""
    run = _current.get()
    if run is None or key in run.kept:
        return
    run.stack.enter_context(enter())
    run.kept.add(key)
