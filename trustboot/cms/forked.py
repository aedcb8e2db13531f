"""A batch of items handled by forked processes, their results streamed back over pipes.

Kept apart from cms/sign.py so that it imports only the standard library: the signing
workflow forks its signers (SignAhead below) before the signing stack is imported.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trustboot.keys.algorithms import HashAlgorithm
    from trustboot.keys.keyfile import PrivateKey

# From this many signatures on, an in-memory key's batch is split over forked processes
# (cms.sign.sign_many, SignAhead).
PARALLEL_SIGN_MIN = 64
# ... and SignAhead only for batches this small in all: their hashing is over by then.
AHEAD_MAX_BYTES = 16 << 20

_FRAME_HEAD = 12  # index, result length, extra length: 4 bytes each
# At most this many chunks, a one-byte token each (see ForkedBatch).
MAX_CHUNKS = 256
# Room asked for in each result pipe (Linux's default limit for an unprivileged process):
# a worker whose results are collected late (SignAhead) then finishes instead of waiting
# on a full pipe (64 KiB by default: ~240 RSA-2048 signatures).
PIPE_BYTES = 1 << 20


def write_frame(fd: int, index: int, result: bytes, extra: bytes) -> None:
    data = b"".join((index.to_bytes(4, "big"), len(result).to_bytes(4, "big"),
                     len(extra).to_bytes(4, "big"), result, extra))
    while data:
        data = data[os.write(fd, data):]


def collect_frames(fds: list[int], got: Callable[[int, bytes, bytes], None]) -> None:
    """Read (index, result, extra) frames from every pipe until all are closed."""
    buffers = {fd: b"" for fd in fds}
    with selectors.DefaultSelector() as selector:
        for fd in fds:
            selector.register(fd, selectors.EVENT_READ)
        while buffers:
            for key, _ in selector.select():
                fd = int(key.fd)
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    selector.unregister(fd)
                    del buffers[fd]  # a truncated last frame is dropped: done again
                    continue
                data = buffers[fd] + chunk
                while len(data) >= _FRAME_HEAD:
                    n = int.from_bytes(data[4:8], "big")
                    m = int.from_bytes(data[8:12], "big")
                    end = _FRAME_HEAD + n + m
                    if len(data) < end:
                        break
                    got(int.from_bytes(data[:4], "big"), data[_FRAME_HEAD:_FRAME_HEAD + n],
                        data[_FRAME_HEAD + n:end])
                    data = data[end:]
                buffers[fd] = data


def _widen(fd: int) -> None:
    import fcntl

    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is not None:
        with contextlib.suppress(OSError):  # above the system's limit: the default stays
            fcntl.fcntl(fd, set_size, PIPE_BYTES)


class ForkedBatch:
    """Items ``0 .. count-1`` handled from now on by ``workers`` forked children, each
    running ``run(index) -> (result, extra)``; ``collect`` takes the results here.

    The work is shared out as it is done, not in fixed shares: a child the scheduler runs
    less (2 cores, 4 children and this process) would otherwise finish last by tens of ms.
    A token is one byte, a chunk's number, read by one child alone (a pipe read of one
    byte is atomic); all of them are in the pipe before the first fork. ``run`` raising
    stops that child: the items it did not send are missing from ``collect``, for the
    caller to do itself. Fork only with no other thread running (the caller checks).
    """

    def __init__(self, count: int, run: Callable[[int], tuple[bytes, bytes]],
                 workers: int) -> None:
        self._children: dict[int, int] = {}  # read fd -> pid
        chunk = max(1, -(-count // MAX_CHUNKS))
        tokens, tokens_in = os.pipe()
        try:
            try:
                os.write(tokens_in, bytes(range(-(-count // chunk))))
            finally:
                os.close(tokens_in)  # the children see the end of the work as end of file
            for _ in range(workers):
                read_fd, write_fd = os.pipe()
                _widen(write_fd)
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child, which never returns
                    code = 1
                    try:
                        os.close(read_fd)
                        for earlier in self._children:  # the siblings' pipes
                            os.close(earlier)
                        while token := os.read(tokens, 1):
                            for i in range(token[0] * chunk, min((token[0] + 1) * chunk,
                                                                 count)):
                                result, extra = run(i)
                                write_frame(write_fd, i, result, extra)
                        code = 0
                    finally:
                        os._exit(code)
                os.close(write_fd)
                self._children[read_fd] = pid
        except BaseException:
            self.close()
            raise
        finally:
            os.close(tokens)  # the children hold their own

    def collect(self, got: Callable[[int, bytes, bytes], None]) -> None:
        """``got(index, result, extra)`` for every item a child sent, as they arrive; then
        the children are gone (also when ``got`` raises)."""
        try:
            collect_frames(list(self._children), got)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the children (if still at work) and reap them; idempotent."""
        children, self._children = self._children, {}
        for read_fd, pid in children.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # gone already, unless we stopped early
            os.close(read_fd)
            os.waitpid(pid, 0)


class SignAhead:
    """The signatures of a batch of digests, made from now on by forked processes with a
    key already unlocked, while this process goes on importing the signing stack and
    checking the signer, its certificate and the targets (cms.workflow.sign_paths).

    Nothing is written: the signatures wait in the pipes until cms.sign takes them, once
    every check passed and only for a signer holding this very key (KeySigner.holds);
    otherwise ``close`` drops them. Each is checked against the key's public key before it
    is sent (a key whose public half is the certificate's: KeySigner compares them).
    """

    def __init__(self, key: PrivateKey, digests: Sequence[bytes], hash_alg: HashAlgorithm,
                 workers: int) -> None:
        # Only what is loaded already: the signing stack is imported after the fork.
        from cryptography.hazmat.primitives.asymmetric import rsa

        from trustboot.cms.certinfo import verify_raw
        from trustboot.keys.keyfile import sign_with_key, warm_up

        self.key = key
        self.hash = hash_alg
        self.digests = list(digests)
        public = key.public_key()
        family = "rsa" if isinstance(public, rsa.RSAPublicKey) else "ecdsa"
        warm_up(key, hash_alg)  # what the first signature would import, imported once here

        def one(index: int) -> tuple[bytes, bytes]:
            digest = self.digests[index]
            signature = sign_with_key(key, digest, hash_alg)
            if not verify_raw(public, family, hash_alg.value, signature, digest=digest):
                raise RuntimeError("a signature did not verify")  # signed again by the caller
            return signature, b""

        self._batch = ForkedBatch(len(self.digests), one, workers)

    def serves(self, hash_name: str, digests: Sequence[bytes]) -> bool:
        """Whether these are the signatures of these ``hash_name`` digests, in this order
        (the caller also checks that its signer holds ``key``)."""
        return hash_name == self.hash.value and list(digests) == self.digests

    def collect(self, got: Callable[[int, bytes], None]) -> None:
        """``got(index, signature)`` for each signature made; the missing ones (a child
        failed) are for the caller to make."""
        self._batch.collect(lambda index, signature, _extra: got(index, signature))

    def close(self) -> None:
        self._batch.close()
