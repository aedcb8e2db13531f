"""Streaming file digests: the half of signing that needs no key and no certificate.

Kept apart from cms/sign.py so that it imports only the standard library: a caller can
start hashing (``HashJob``) before the signing stack (cryptography, asn1crypto, iPXE's
rules) is imported, and the two overlap; hashlib drops the GIL on large buffers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustboot.errors import ConfigError, OperationalError
from trustboot.keys.algorithms import HashAlgorithm

CHUNK = 1 << 20
# Files at least this large are hashed concurrently when there are several: hashlib drops
# the GIL while it digests a large buffer, so threads use every core, without the start-up
# and import cost of worker processes and with one progress display.
PARALLEL_MIN_SIZE = 32 << 20
Progress = Callable[[int], None]
# progress(path, size) opens a per-file progress display and yields its byte-count callback.
ProgressFactory = Callable[[Path, int], contextlib.AbstractContextManager[Progress]]


class Cancelled(Exception):
    """Hashing was stopped from another thread (e.g. the key failed to unlock)."""


def hash_file(path: Path, hash_names: Sequence[str], progress: Progress | None = None,
              cancel: threading.Event | None = None) -> tuple[dict[str, bytes], int]:
    """Digest ``path`` with each hash in one pass; returns (digests, size).

    A reader thread fills the next buffer while this one is hashed (both release the
    GIL), so reading costs no wall time; memory stays at a few fixed buffers whatever the
    file size.
    """
    hashers = [hashlib.new(name) for name in hash_names]
    size = 0
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb", buffering=0) as fh:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path} is not a regular file",
                                  hint="sign image files (not devices, FIFOs or sockets)")
            os.set_blocking(fd, True)
            with contextlib.suppress(AttributeError, OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            small = st.st_size <= CHUNK
            # Small files (boot scripts, most kernels' .sig companions) in one read: a
            # read-ahead thread and its buffers would cost more than the hashing.
            for chunk in (_whole(fh) if small else _chunks(fh)):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(str(path))
                for h in hashers:
                    h.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(len(chunk))
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a file",
                          hint="pass the image file itself") from None
    except OSError as exc:
        raise OperationalError(f"cannot read {path}: {exc.strerror}",
                               hint="check the path and permissions") from None
    return {name: h.digest() for name, h in zip(hash_names, hashers, strict=True)}, size


def _whole(fh: Any) -> Iterator[memoryview]:
    while True:  # a file that grew since fstat() is still read to its end, in chunks
        data = fh.read(CHUNK)
        if not data:
            return
        yield memoryview(data)


def _chunks(fh: Any, buffers: int = 3) -> Iterator[memoryview]:
    """Yield views of the file's consecutive chunks, read ahead by a helper thread."""
    free: queue.Queue[bytearray] = queue.Queue()
    full: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue()
    for _ in range(buffers):
        free.put(bytearray(CHUNK))
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                buf = free.get()
                if stop.is_set():
                    break
                n = fh.readinto(buf)
                if not n:
                    break
                full.put((buf, n))
            full.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            full.put(exc)

    thread = threading.Thread(target=reader, name="trustboot-read", daemon=True)
    thread.start()
    try:
        while True:
            item = full.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            yield memoryview(buf)[:n]
            free.put(buf)
    finally:
        stop.set()
        free.put(bytearray(0))  # wake the reader if it waits for a buffer
        thread.join()


@dataclass(frozen=True)
class Hashed:
    path: Path
    size: int
    digests: dict[str, bytes]


def hash_files(
    paths: Sequence[Path], hash_name: str, *,
    progress: ProgressFactory | None = None,
    cancel: threading.Event | None = None,
) -> list[Hashed]:
    """Digest every file with ``hash_name`` (and SHA-256 for the manifest). No key needed.

    Several large files are hashed concurrently, one thread each (up to the core count).
    """
    hash_name = HashAlgorithm.parse(hash_name)
    names = [hash_name.value] if hash_name == "sha256" else [hash_name.value, "sha256"]
    sizes = [_size(p) for p in paths]
    large = [i for i, size in enumerate(sizes) if size >= PARALLEL_MIN_SIZE]
    workers = min(len(large), os.cpu_count() or 1)
    out: list[Hashed | None] = [None] * len(paths)
    if workers >= 2:
        lock = threading.Lock()
        total = sum(sizes[i] for i in large)
        with contextlib.ExitStack() as stack:
            bar = (stack.enter_context(progress(Path(f"{len(large)} files"), total))
                   if progress is not None else None)

            def feed(n: int) -> None:
                if bar is not None:
                    with lock:
                        bar(n)

            def one(i: int) -> Hashed:
                digests, size = hash_file(paths[i], names, feed, cancel)
                return Hashed(paths[i], size, digests)

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for i, result in zip(large, pool.map(one, large), strict=True):
                    out[i] = result
    for i, path in enumerate(paths):
        if out[i] is not None:
            continue
        if progress is None:
            digests, size = hash_file(path, names, None, cancel)
        else:
            with progress(path, sizes[i]) as cb:
                digests, size = hash_file(path, names, cb, cancel)
        out[i] = Hashed(path, size, digests)
    return [h for h in out if h is not None]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # hash_file reports the error with its context


class HashJob:
    """``hash_files`` running in a background thread from now on; ``result()`` waits."""

    def __init__(self, paths: Sequence[Path], hash_name: str, *,
                 progress: ProgressFactory | None = None) -> None:
        self.paths = list(paths)
        self.hash = HashAlgorithm.parse(hash_name)
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._result: list[Hashed] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(progress,),
                                        name="trustboot-hash", daemon=True)
        self._thread.start()

    def _run(self, progress: ProgressFactory | None) -> None:
        try:
            self._result = hash_files(self.paths, self.hash, progress=progress,
                                      cancel=self._cancel)
        except BaseException as exc:  # handed to result(), which re-raises it
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> list[Hashed]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop reading (the work is no longer needed) and wait for the thread."""
        self._cancel.set()
        self._thread.join()
