"""Run the trustboot CLI and SIGKILL itself at the Nth filesystem commit point.

Commit points are the calls that make a change visible: os.replace (atomic writes),
os.link (new key files) and os.unlink. CRASH_AT=N kills the process just before the Nth
one; CRASH_COUNT_FILE receives the number of commit points of a run that was not killed.
CRASH_SIGNAL=SIGTERM (say) sends that signal instead: the run unwinds and cleans up, as
when an operator or a CI runner stops it.
"""

from __future__ import annotations

import atexit
import os
import signal
from collections.abc import Callable
from typing import Any

target = int(os.environ.get("CRASH_AT", "0"))
signum = getattr(signal, os.environ.get("CRASH_SIGNAL", "SIGKILL"))
count = 0


def hook(real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        global count
        count += 1
        if count == target:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    return wrapped


os.replace = hook(os.replace)
os.link = hook(os.link)
os.unlink = hook(os.unlink)

if os.environ.get("CRASH_COUNT_FILE"):
    path = os.environ["CRASH_COUNT_FILE"]
    atexit.register(lambda: open(path, "w").write(str(count)))

from trustboot.cli.main import main  # noqa: E402

main()
