"""Progress displays shared by commands: bars for uploads and read-backs, a line for make.

Apart from the command modules, so `trustboot release` (and `demo`) use them without
building the `publish` and `ipxe` command groups and their options: a release pays its
start-up once per run.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from trustboot.cli._common import is_interactive


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class MakeProgress:
    """A live line on a terminal; elsewhere one line every 15 s so CI logs show life;
    nothing with --json."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.count = 0
        self.last = 0.0
        self.quiet = quiet
        self.tty = is_interactive() and not quiet

    def __call__(self, step: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self.quiet:
            return
        if self.tty:
            click.echo(f"\r\x1b[Kmake: {self.count} steps, {step}"[:120], nl=False, err=True)
        elif now - self.last >= 15:
            self.last = now
            click.echo(f"make: {self.count} steps, {step}", err=True)

    def finish(self) -> None:
        if self.tty and self.count:
            click.echo("\r\x1b[K", nl=False, err=True)


class BarProgress:
    """Progress bars on stderr (TTY only), safe to call from upload threads: per phase
    (upload, read-back), the bytes done of the total and the rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bar: Any = None
        self._done = 0
        self._total = 0
        self._start = 0.0

    def phase(self, name: str, total_bytes: int) -> None:
        with self._lock:
            self._close()
            if total_bytes > 0:
                self._done, self._total, self._start = 0, total_bytes, time.monotonic()
                self._bar = click.progressbar(length=total_bytes, label=f"{name:9}",
                                              file=sys.stderr, show_pos=False,
                                              item_show_func=lambda text: text)
                self._bar.__enter__()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            if self._bar is not None:
                self._done += nbytes
                rate = self._done / max(time.monotonic() - self._start, 1e-3)
                self._bar.update(nbytes, f"{mib(self._done)} of {mib(self._total)}, "
                                         f"{rate / (1 << 20):.1f} MiB/s")

    def item(self, key: str, action: str) -> None:
        pass

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def close(self) -> None:
        with self._lock:
            self._close()


@contextmanager
def upload_progress(as_json: bool) -> Iterator[BarProgress | None]:
    """Bars on a terminal only; quiet with --json or when stderr is not a TTY."""
    bars = BarProgress() if not as_json and is_interactive() else None
    try:
        yield bars
    finally:
        if bars:
            bars.close()
