"""Stream a local file to an origin, reading (and if needed hashing) on a helper thread.

The helper reads chunk N+1 while the caller sends chunk N (file reads, SHA-256 and TLS
writes all release the GIL). At most ``depth`` chunks are in flight: memory stays a few
MiB whatever the file size.

Two streams share that pipeline:

* ``hashed_chunks``: what is sent must be the file whose digest was published. When this
  process hashed the file moments ago (to sign it or list it:
  ``trustboot.cms.digest.recall``) and the open file still has that stamp, it is not
  hashed again: the stamp is checked once more before the last chunk leaves, so a file
  written meanwhile still fails the upload. That saves about a CPU second per GiB
  (SHA-256 even with SHA-NI), which is what kept the upload behind ``curl -T``.
  Otherwise the bytes are hashed as they are sent.
* ``digesting_chunks``: the digest is not known yet. The one read of the file feeds both
  the hashes and the upload (an origin stages a large input this way while the release
  is being planned, see ``trustboot.publish.origin.StagingOrigin``); the file's stamp
  (device, inode, size, mtime, ctime) is taken when it is opened and compared when the
  last byte was read, so a file written meanwhile fails the upload.

Either way nothing is committed on the origin unless the stream ends cleanly (the check
raises before the last chunk is handed out), and the read-back checks every byte the
origin serves before anything is switched.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trustboot.cms.digest import Accept, file_stamp, recall
from trustboot.errors import OperationalError
from trustboot.publish.origin import Staged, check_key

# When hashing, fewer larger chunks measured less CPU per GiB than 1 MiB; without hashing
# the CPU is the same and 1 MiB kept the pipeline fuller (512 MiB to nginx against curl -T,
# alternated on a loaded 2-core machine: 1.1-1.9x curl's rate with 1 MiB, 0.8-1.4x with 4)
CHUNK = 4 << 20
CHUNK_UNHASHED = 1 << 20
_HINT = "do not modify the release directory during a publish"


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read descriptor of the regular file ``path`` and its stat (OperationalError if it
    cannot be opened or is not one)."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place since the scan must not hang the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise OperationalError(f"cannot read {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OperationalError(f"{path} is no longer a regular file", hint=_HINT)
    os.set_blocking(fd, True)
    return fd, st


def _pipeline(fd: int, *, size: int, read_size: int, depth: int,
              on_chunk: Callable[[bytes], None], finish: Callable[[int], None],
              progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """The chunks of the open file ``fd`` (closed at the end), read on a helper thread
    that calls ``on_chunk`` on each and ``finish(total)`` after the last (which raises if
    what was read must not be sent). The consumer stays one chunk behind, so the last
    chunk leaves only after ``finish`` passed."""
    fh = open(fd, "rb", buffering=0)
    full: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader() -> None:
        total = 0
        try:
            with fh:
                while not stop.is_set():
                    data = fh.read(read_size)
                    if not data:
                        break
                    on_chunk(data)
                    total += len(data)
                    if total > size:
                        break
                    full.put(data)
                finish(total)
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


def hashed_chunks(path: Path, *, size: int, sha256: str,
                  progress: Callable[[int], None] | None = None,
                  chunk: int | None = None, depth: int = 3) -> Iterator[bytes]:
    """The file's bytes in chunks; OperationalError at the end if it is not ``size`` bytes
    with digest ``sha256`` (the file changed since it was hashed): raised before the last
    chunk is handed out, so a caller that commits only after a complete stream never
    commits a changed file."""
    fd, st = open_regular(path)
    known = recall(st, "sha256")
    # None: hashed by this process with this very stamp; re-check the stamp instead
    digest = None if (st.st_size == size and known is not None
                      and known.hex() == sha256) else hashlib.sha256()

    def finish(total: int) -> None:
        same = (digest.hexdigest() == sha256 if digest is not None
                else file_stamp(os.fstat(fd)) == file_stamp(st))
        if total != size or not same:
            raise OperationalError(
                f"{path} changed while it was uploaded (now {total} bytes"
                + (f", sha256 {digest.hexdigest()[:16]}...)" if digest else
                   ", modified meanwhile)"), hint=_HINT)

    yield from _pipeline(fd, size=size, depth=depth,
                         read_size=chunk or (CHUNK if digest is not None else CHUNK_UNHASHED),
                         on_chunk=digest.update if digest is not None else lambda _d: None,
                         finish=finish, progress=progress)


@dataclass
class Digested:
    """What ``digesting_chunks`` read, filled in once the whole file was read unchanged."""

    size: int = 0
    digests: dict[str, bytes] = field(default_factory=dict)
    stamp: os.stat_result | None = None  # the file's stat when it was opened


def digesting_chunks(path: Path, *, size: int, hash_names: Collection[str], out: Digested,
                     progress: Callable[[int], None] | None = None,
                     cancel: threading.Event | None = None,
                     chunk: int = CHUNK, depth: int = 3,
                     accept: Accept | None = None) -> Iterator[bytes]:
    """The file's bytes in chunks, hashed with every one of ``hash_names`` as they are
    read. ``out`` gets the size, digests and stamp before the last chunk is handed out;
    OperationalError instead if the file is not ``size`` bytes or its stamp changed while
    it was read (so a caller that commits only after a complete stream never commits a
    file that changed under it). ``cancel`` set: OperationalError at the next chunk.
    ``accept``: called with the opened file's stat before a byte is read (cms.digest)."""
    fd, st = open_regular(path)
    if accept is not None:
        try:
            accept(path, st)
        except BaseException:
            os.close(fd)
            raise
    names = sorted(set(hash_names))
    hashers = [hashlib.new(name) for name in names]

    def on_chunk(data: bytes) -> None:
        if cancel is not None and cancel.is_set():
            raise OperationalError(f"the upload of {path} was cancelled")
        for h in hashers:
            h.update(data)

    def finish(total: int) -> None:
        after = os.fstat(fd)
        if total != size or st.st_size != size or file_stamp(after) != file_stamp(st):
            raise OperationalError(
                f"{path} changed while it was read and uploaded ({size} bytes expected, "
                f"{total} read, modified meanwhile)", hint=_HINT)
        out.size, out.stamp = total, st
        out.digests = {name: h.digest() for name, h in zip(names, hashers, strict=True)}

    yield from _pipeline(fd, size=size, read_size=chunk, depth=depth, on_chunk=on_chunk,
                         finish=finish, progress=progress)


class DigestingUpload:
    """One staging upload of ``path`` (a StagingOrigin's ``stage_file``): the size to
    announce, a fresh chunk stream for each attempt (a retried upload reads and hashes
    the file again), and the Staged record once a stream ended cleanly."""

    def __init__(self, path: Path, *, hash_names: Collection[str],
                 progress: Callable[[int], None] | None = None,
                 cancel: threading.Event | None = None, accept: Accept | None = None
                 ) -> None:
        self.accept = accept
        try:
            self.size = os.stat(path).st_size
        except OSError as exc:
            raise OperationalError(f"cannot read {path}: {exc.strerror or exc}") from None
        self.path, self.progress, self.cancel = path, progress, cancel
        self.names = set(hash_names) | {"sha256"}
        self.out = Digested()

    def chunks(self) -> Iterator[bytes]:
        self.out = Digested()  # never what an earlier attempt read
        return digesting_chunks(self.path, size=self.size, hash_names=self.names,
                                out=self.out, progress=self.progress, cancel=self.cancel,
                                accept=self.accept)

    def staged(self, token: str) -> Staged:
        """The record of the object the origin now holds as ``token``."""
        assert self.out.stamp is not None, "the stream did not end cleanly"
        return Staged(token, self.path, self.out.size, dict(self.out.digests),
                      self.out.stamp)


class StagesUploads(ABC):
    """``stage_file`` of a StagingOrigin, written once: check the key the file will get,
    set up the DigestingUpload, and record what the backend stored. A backend mixes this
    in and says only how it stores a stream under a temporary name
    (``_store_staging``)."""

    def stage_file(self, path: Path, *, name: str, hash_names: Collection[str],
                   progress: Callable[[int], None] | None = None,
                   cancel: threading.Event | None = None,
                   accept: Accept | None = None) -> Staged:
        check_key(name)
        upload = DigestingUpload(path, hash_names=hash_names, progress=progress,
                                 cancel=cancel, accept=accept)
        return upload.staged(self._store_staging(name, upload))

    @abstractmethod
    def _store_staging(self, name: str, upload: DigestingUpload) -> str:
        """Store ``upload.chunks()`` (``upload.size`` bytes) as a new temporary object
        named after the key ``name``; its token. Nothing may be left behind if the stream
        raises (a file changed while it was read)."""
