"""Streaming file digests: the half of signing that needs no key and no certificate.

Kept apart from cms/sign.py so that it imports only the standard library: a caller can
start hashing (``HashJob``) before the signing stack (cryptography, asn1crypto, iPXE's
rules) is imported, and the two overlap; hashlib drops the GIL on large buffers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustboot.errors import ConfigError, OperationalError
from trustboot.keys.algorithms import HashAlgorithm

# 128 KiB reads: the page-cache copy lands in a buffer that stays in the core's cache for
# the hash to read back. Measured on a 2 GiB file (SHA-NI): 1 MiB or 256 KiB reads cost
# 3-4x the kernel time of 64-128 KiB ones (1.4 s vs 0.35 s), which was most of the gap to
# `openssl dgst` (8 KiB reads: more user time per byte in Python).
CHUNK = 128 << 10
# Files at least this large are hashed concurrently when there are several: hashlib drops
# the GIL while it digests a large buffer, so threads use every core, without the start-up
# and import cost of worker processes and with one progress display.
PARALLEL_MIN_SIZE = 32 << 20
Progress = Callable[[int], None]
# progress(path, size) opens a per-file progress display and yields its byte-count callback.
ProgressFactory = Callable[[Path, int], contextlib.AbstractContextManager[Progress]]
# accept(path, st): called with the stat of the file as opened (the descriptor that is
# read), before a byte is read; raises to refuse it (a file swapped since it was checked)
Accept = Callable[[Path, os.stat_result], None]


class Cancelled(Exception):
    """Hashing was stopped from another thread (e.g. the key failed to unlock)."""


def hash_file(path: Path, hash_names: Sequence[str], progress: Progress | None = None,
              cancel: threading.Event | None = None, *,
              accept: Accept | None = None) -> tuple[dict[str, bytes], int]:
    """Digest ``path`` with each hash in one pass; returns (digests, size).

    One reused CHUNK buffer: memory stays flat whatever the file size. A read-ahead
    thread was measured slower here (with SHA-NI the page-cache copy is cheap, and handing
    buffers between two threads costs GIL switches), so reading is plain and sequential,
    as `openssl dgst` does it. ``accept``: see Accept.
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
            if accept is not None:
                accept(path, st)
            os.set_blocking(fd, True)
            started = time.time_ns()
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
            after = os.fstat(fd)
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a file",
                          hint="pass the image file itself") from None
    except OSError as exc:
        raise OperationalError(f"cannot read {path}: {exc.strerror}",
                               hint="check the path and permissions") from None
    if size != st.st_size or file_stamp(st) != file_stamp(after):
        # The digest is of bytes that may never have been in the file together (a build
        # step still writing it, a copy in progress): signing it would publish a
        # signature that verifies for no version of the file.
        raise OperationalError(
            f"{path} changed while it was read ({size} bytes read, {st.st_size} when "
            "opened)", hint="sign it once whatever writes it has finished")
    digests = {name: h.digest() for name, h in zip(hash_names, hashers, strict=True)}
    if started - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_WINDOW_NS:
        remember(after, digests)
    return digests, size


# -- digests this process computed, by file identity -----------------------------------
# A file hashed here (to sign it, or to list it in a manifest) is often sent to an origin
# seconds later. The uploader may skip hashing it again when the open file still has the
# stamp it had while it was hashed, and has it still when the last byte is sent (it checks
# both). The stamp has the same strength as the publish cache's (device, inode, size,
# mtime_ns, ctime_ns; ctime cannot be set back by a user). What an origin serves is
# read back in full before anything is switched: compared byte for byte with the file
# such a stamp vouches for (trustboot.publish.readback.Tally), or else hashed.
# A file changed less than RACY_WINDOW_NS before it was hashed is not remembered (as git
# does for its index): a write in the same timestamp tick would leave the stamp unchanged,
# while any write after a tick has passed moves ctime (filesystem granularity is 2 s at
# worst).
RACY_WINDOW_NS = 2_500_000_000
_KNOWN: dict[tuple[int, ...], dict[str, bytes]] = {}
_KNOWN_LOCK = threading.Lock()
_KNOWN_MAX = 4096


def file_stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def remember(st: os.stat_result, digests: dict[str, bytes]) -> None:
    """Record that the file with stamp ``st`` has ``digests`` (see above)."""
    with _KNOWN_LOCK:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.pop(next(iter(_KNOWN)))
        _KNOWN.setdefault(file_stamp(st), {}).update(digests)


def recalled(st: os.stat_result) -> dict[str, bytes]:
    """Every digest this process computed of the file with stamp ``st`` (by name)."""
    with _KNOWN_LOCK:
        return dict(_KNOWN.get(file_stamp(st), {}))


def recall(st: os.stat_result, name: str) -> bytes | None:
    """The ``name`` digest of the file with stamp ``st``, if this process computed it."""
    return recalled(st).get(name)


def _whole(fh: Any) -> Iterator[memoryview]:
    while True:  # a file that grew since fstat() is still read to its end, in chunks
        data = fh.read(CHUNK)
        if not data:
            return
        yield memoryview(data)


def _chunks(fh: Any) -> Iterator[memoryview]:
    """Views of the file's consecutive chunks, read into one reused buffer."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := fh.readinto(buf):
        yield view[:n]


@dataclass(frozen=True)
class Hashed:
    path: Path
    size: int
    digests: dict[str, bytes]


def hash_files(
    paths: Sequence[Path], hash_name: str, *,
    progress: ProgressFactory | None = None,
    cancel: threading.Event | None = None,
    accept: Accept | None = None,
) -> list[Hashed]:
    """Digest every file with ``hash_name`` (and SHA-256 for the manifest). No key needed.
    ``accept``: see Accept.

    Several large files are hashed concurrently, one thread each (up to the core count).
    """
    names = _hash_names(HashAlgorithm.parse(hash_name))
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
                digests, size = hash_file(paths[i], names, feed, cancel, accept=accept)
                return Hashed(paths[i], size, digests)

            # imported here: `trustboot sign` imports this module before it starts the
            # key's KDF, and concurrent.futures (with logging) costs ~4 ms
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for i, result in zip(large, pool.map(one, large), strict=True):
                    out[i] = result
    for i, path in enumerate(paths):
        if out[i] is not None:
            continue
        if progress is None:
            digests, size = hash_file(path, names, None, cancel, accept=accept)
        else:
            with progress(path, sizes[i]) as cb:
                digests, size = hash_file(path, names, cb, cancel, accept=accept)
        out[i] = Hashed(path, size, digests)
    return [h for h in out if h is not None]


def hash_bytes(data: bytes, hash_name: str) -> dict[str, bytes]:
    """The digests hash_files gives a file, of bytes held in memory (a rendered script)."""
    return {name: hashlib.new(name, data).digest()
            for name in _hash_names(HashAlgorithm.parse(hash_name))}


def _hash_names(hash_alg: HashAlgorithm) -> list[str]:
    """The digests to compute: the signature's, and SHA-256 for the manifest."""
    return [hash_alg.value] if hash_alg == "sha256" else [hash_alg.value, "sha256"]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # hash_file reports the error with its context


# From this many bytes in total, a HashJob hashes in forked processes (see HashJob).
PROCESS_MIN_BYTES = 16 << 20
# ... and from this many files, however small (one process: per-file overhead, not bytes):
# 500 boot scripts cost ~25 ms of the GIL in a thread, which the caller's imports and the
# key's KDF (which holds the GIL) then wait for.
PROCESS_MIN_FILES = 64


class HashJob:
    """``hash_files`` running in the background from now on; ``result()`` waits.

    Without a progress display and with enough data (or many files: then in one process),
    the files are hashed in forked child processes (one per core at most, largest files
    spread first): a hashing thread would
    share the GIL with whatever the caller does meanwhile (importing the signing stack,
    the key's KDF) and was measured to slow down by a third. Otherwise (a progress bar to
    feed, little data, or other threads running, where forking is unsafe) a thread.

    ``here``: little data (below PROCESS_MIN_BYTES) without a progress display is hashed
    in the caller's thread on the first ``result()`` (``inline`` says so), for a caller
    whose other core is busy already: with the key's KDF started on a thread, a hashing
    process made three busy tasks on two cores (the KDF, the caller's imports, the
    hasher), which slowed the KDF every signer waits for by ~40 ms of a 0.3 s run of 500
    boot scripts; hashed here first (~20 ms), they are two.
    """

    def __init__(self, paths: Sequence[Path], hash_name: str, *,
                 progress: ProgressFactory | None = None, fork: bool = True,
                 here: bool = False) -> None:
        self.paths = list(paths)
        self.hash = HashAlgorithm.parse(hash_name)
        self._cancel = threading.Event()
        self._result: list[Hashed] | None = None
        self._error: BaseException | None = None
        self._children: list[tuple[int, int, list[int]]] = []
        self._thread: threading.Thread | None = None
        sizes = [_size(path) for path in self.paths]
        self.total = total = sum(sizes)  # bytes, as the files stood when the job began
        self.inline = here and progress is None and total < PROCESS_MIN_BYTES
        if self.inline:
            pass  # hashed by result()
        elif (fork and progress is None
                and (total >= PROCESS_MIN_BYTES or len(sizes) >= PROCESS_MIN_FILES)
                and hasattr(os, "fork")
                and threading.active_count() == 1):
            # little data in many files: one process beside this one, not one per core
            self._fork(sizes, cores=1 if total < PROCESS_MIN_BYTES else None)
        else:
            self._thread = threading.Thread(target=self._run, args=(progress,),
                                            name="trustboot-hash", daemon=True)
            self._thread.start()

    def _run(self, progress: ProgressFactory | None) -> None:
        try:
            self._result = hash_files(self.paths, self.hash, progress=progress,
                                      cancel=self._cancel)
        except BaseException as exc:  # handed to result(), which re-raises it
            self._error = exc

    def _fork(self, sizes: list[int], cores: int | None = None) -> None:
        workers = max(1, min(cores or os.cpu_count() or 1, len(self.paths)))
        groups: list[list[int]] = [[] for _ in range(workers)]
        loads = [0] * workers
        for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
            target = loads.index(min(loads))
            groups[target].append(i)
            loads[target] += sizes[i]
        parent = os.getpid()
        for group in groups:
            if not group:
                continue
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child, which never returns
                _die_with_parent(parent)
                os.close(read_fd)
                for _pid, earlier, _group in self._children:  # the siblings' pipes
                    os.close(earlier)
                os._exit(_hash_in_child(write_fd, [self.paths[i] for i in group], self.hash))
            os.close(write_fd)
            self._children.append((pid, read_fd, group))

    @property
    def processes(self) -> int:
        """How many child processes are hashing (0: a thread, or already collected)."""
        return len(self._children)

    def result(self) -> list[Hashed]:
        if self.inline and self._result is None and self._error is None:
            self._run(None)  # once: later calls return (or raise) the same
        elif self._thread is not None:
            self._thread.join()
        elif self._result is None and self._error is None:
            self._collect()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _collect(self) -> None:
        import json

        out: list[Hashed | None] = [None] * len(self.paths)
        try:
            # Each child stays in self._children until it is reaped: a signal (SIGTERM)
            # raised while waiting on a pipe leaves cancel() the ones still running to
            # kill, instead of orphans hashing on after the command "cleaned up".
            while self._children:
                pid, read_fd, group = self._children[0]
                data = _read_all(read_fd)
                os.waitpid(pid, 0)
                self._children.pop(0)
                os.close(read_fd)
                try:
                    doc = json.loads(data)
                except ValueError:
                    doc = {"error": "RuntimeError", "message": "a hashing process died"}
                if "error" in doc and self._error is None:
                    self._error = _rebuild_error(doc)
                for i, item in zip(group, doc.get("files", []), strict=False):
                    digests = {k: bytes.fromhex(v) for k, v in item["digests"].items()}
                    out[i] = Hashed(self.paths[i], item["size"], digests)
                    if item.get("stamp"):  # the child hashed it: remember it here too
                        with _KNOWN_LOCK:
                            _KNOWN[tuple(item["stamp"])] = dict(digests)
        except BaseException:
            self._stop_children()
            raise
        if self._error is None:
            self._result = [h for h in out if h is not None]
            if len(self._result) != len(self.paths):
                self._error = RuntimeError("a hashing process returned too few results")

    def cancel(self) -> None:
        """Stop reading (the work is no longer needed) and wait for the workers."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()
        self._stop_children()

    def _stop_children(self) -> None:
        """Kill and reap every child not reaped yet; idempotent."""
        import signal

        children, self._children = self._children, []
        for pid, read_fd, _ in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.close(read_fd)
            with contextlib.suppress(ChildProcessError):  # reaped just before a signal
                os.waitpid(pid, 0)


# prctl(2): the signal a process gets when the thread that forked it ends
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In a forked hasher: be killed when this process's parent ends, however it ends
    (SIGKILL leaves it no chance to kill its children). Linux only; elsewhere the
    parent's cancel() is all there is."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the prctl took effect
        os._exit(1)


def _read_all(fd: int) -> bytes:
    """Everything written to the pipe ``fd`` until its writer closes it (``fd`` stays
    open: its owner closes it once the writer was reaped)."""
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _hash_in_child(write_fd: int, paths: list[Path], hash_alg: HashAlgorithm) -> int:
    """Hash ``paths`` and write the JSON result to ``write_fd``; the exit code."""
    import json

    from trustboot.errors import TrustbootError

    code = 0
    try:
        files = []
        names = _hash_names(hash_alg)
        opened: list[os.stat_result] = []
        for path in paths:
            # one after the other (this process has its share of the cores), without
            # hash_files' set-up per file (a stat, the core count: a read of /sys)
            # the stamp of the descriptor that was read, not of the path looked up again:
            # a directory renamed meanwhile made that lookup fail (exit 70)
            digests, size = hash_file(path, names,
                                      accept=lambda _path, st: opened.append(st))
            st = opened[-1]  # hash_file checked it still had this stamp after the read
            known = _KNOWN.get(file_stamp(st)) == digests
            files.append({"size": size, "digests": {k: v.hex() for k, v in digests.items()},
                          "stamp": list(file_stamp(st)) if known else None})
        doc: dict[str, Any] = {"files": files}
    except TrustbootError as exc:
        doc, code = {"error": type(exc).__name__, "message": exc.message,
                     "hint": exc.hint}, 1
    except BaseException as exc:  # a bug: reported to the parent, which raises it
        doc, code = {"error": "RuntimeError", "message": f"{type(exc).__name__}: {exc}"}, 1
    try:
        with os.fdopen(write_fd, "wb") as fh:
            fh.write(json.dumps(doc).encode())
    except BaseException:
        return 2
    return code


def _rebuild_error(doc: dict[str, Any]) -> BaseException:
    from trustboot import errors

    cls = getattr(errors, str(doc.get("error")), None)
    if isinstance(cls, type) and issubclass(cls, errors.TrustbootError) \
            and cls is not errors.VerificationError:
        return cls(str(doc.get("message")), hint=doc.get("hint"))
    return RuntimeError(str(doc.get("message")))
