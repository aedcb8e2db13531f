"""Stream a local file to an origin, hashing it on a helper thread.

The helper reads and hashes chunk N+1 while the caller sends chunk N (file reads, SHA-256
and TLS writes all release the GIL), so verifying what is uploaded costs no wall time.
At most ``depth`` chunks are in flight: memory stays a few MiB whatever the file size.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from trustboot.errors import OperationalError

CHUNK = 1 << 20


def hashed_chunks(path: Path, *, size: int, sha256: str,
                  progress: Callable[[int], None] | None = None,
                  chunk: int = CHUNK, depth: int = 4) -> Iterator[bytes]:
    """The file's bytes in chunks; OperationalError at the end if it is not ``size`` bytes
    with digest ``sha256`` (the file changed since it was hashed): raised before the last
    chunk is handed out, so a caller that commits only after a complete stream never
    commits a changed file."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise OperationalError(f"cannot read {path}: {exc.strerror or exc}") from None
    full: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader() -> None:
        digest = hashlib.sha256()
        total = 0
        try:
            with fh:
                while not stop.is_set():
                    data = fh.read(chunk)
                    if not data:
                        break
                    digest.update(data)
                    total += len(data)
                    if total > size:
                        break
                    full.put(data)
            if total != size or digest.hexdigest() != sha256:
                full.put(OperationalError(
                    f"{path} changed while it was uploaded (now {total} bytes, sha256 "
                    f"{digest.hexdigest()[:16]}...)",
                    hint="do not modify the release directory during a publish"))
            else:
                full.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            full.put(exc)

    thread = threading.Thread(target=reader, name="trustboot-upload-read", daemon=True)
    thread.start()
    pending: bytes | None = None
    try:
        while True:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            if pending is not None:
                # one chunk behind: the last chunk leaves only after the digest matched
                yield pending
                if progress:
                    progress(len(pending))
            if item is None:
                return
            pending = item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                full.get_nowait()
            except queue.Empty:
                thread.join(0.05)
