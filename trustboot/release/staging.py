"""Upload a release's large inputs while they are hashed: one read of each file.

The release id may be a digest of the inputs (``{digest8}``), so the classic order is
hash everything (plan), then upload. On an origin that can move an object into place on
the server (``trustboot.publish.origin.StagingOrigin``: WebDAV MOVE, a rename), each
large input is instead uploaded to a temporary object while it is hashed, in the same
read; the publish stage later moves it to ``releases/<id>/<key>`` once the id and the
signatures exist. What does not change:

* the bytes on the origin are the bytes that were hashed and signed (one read feeds
  both); a local file whose stamp (device, inode, size, mtime, ctime) changed while it
  was read is refused, and nothing of it is left on the origin;
* the release manifest claims the id before anything is moved under it, every object is
  read back over HTTPS and verified before the switch, and a failure leaves the live
  release as it was; staged objects not placed are deleted, and a killed run's are swept
  by the next publish (``remove_stale_temps``, by age);
* a re-run uploads nothing: inputs the publish cache knows are never staged, and when a
  release on the origin already holds the largest input under its key with the same
  size (a re-run without the cache), everything is hashed first, as before;
* a dry run stages nothing; an origin that cannot move cheaply (S3) is not staged.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from trustboot.cms.digest import RACY_WINDOW_NS, Accept, Hashed, remember
from trustboot.publish.cache import PublishCache
from trustboot.publish.manifest import RELEASES_PREFIX, release_id_problem, release_prefix
from trustboot.publish.origin import Origin, Staged, StagingOrigin, staging_of
from trustboot.publish.pipeline import PublishProgress
from trustboot.release.plan import InputFile

# Smaller inputs are hashed locally and uploaded later: a temporary object and a move
# cost more round trips than the read they would save.
STAGE_MIN_SIZE = 4 << 20


class _Progress:
    """Counts the staged bytes; forwards them to the bars once ``show`` was called (the
    signer's passphrase may be prompted for meanwhile, and a bar must not draw over it)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.lock = threading.Lock()
        self.target: PublishProgress | None = None

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.target is not None:
                self.target.advance(n)

    def show(self, target: PublishProgress | None) -> None:
        with self.lock:
            if target is not None and self.total:
                target.phase("upload", self.total)
                if self.done:
                    target.advance(self.done)
            self.target = target


class InputStaging:
    """The staging uploads of some inputs, running in threads; ``result()`` waits for
    them, ``close()`` stops them and deletes every staged object that was not placed."""

    def __init__(self, origin: StagingOrigin, inputs: Sequence[InputFile], total: int,
                 hash_name: str, accept: Accept | None = None) -> None:
        self.origin = origin
        self.cancel = threading.Event()
        self.started = time.time_ns()
        self.progress = _Progress(total)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(inputs)),
                                        thread_name_prefix="trustboot-stage")
        self._futures: dict[Path, Future[Staged]] = {
            i.path: self._pool.submit(origin.stage_file, i.path, name=i.key,
                                      hash_names={hash_name}, cancel=self.cancel,
                                      progress=self.progress.advance, accept=accept)
            for i in inputs}

    def result(self, cache: PublishCache | None) -> dict[Path, Staged]:
        """Every input's Staged (hashes, size, stamp); the first failure is raised (the
        others are stopped). Inputs read unchanged are remembered in ``cache``."""
        try:
            out = {path: f.result() for path, f in self._futures.items()}
        except BaseException:
            self.close()
            raise
        for path, s in out.items():
            # (as cms.digest does: a file changed just before it was read may change again
            # within the same timestamp tick, so its stamp proves nothing)
            if self.started - max(s.stamp.st_mtime_ns, s.stamp.st_ctime_ns) > RACY_WINDOW_NS:
                remember(s.stamp, s.digests)  # another key of the same file: not hashed
                if cache is not None:
                    cache.remember_local(path, s.stamp, s.sha256)
        return out

    def close(self) -> None:
        self.cancel.set()
        self._pool.shutdown(wait=True)
        for f in self._futures.values():
            if f.done() and f.exception() is None:
                with contextlib.suppress(Exception):
                    self.origin.discard_staged(f.result())


def hashed(staged: Mapping[Path, Staged]) -> dict[Path, Hashed]:
    return {path: Hashed(path, s.size, dict(s.digests)) for path, s in staged.items()}


def start_staging(origin: Origin, inputs: Sequence[InputFile], *, hash_name: str,
                  cache: PublishCache | None,
                  accept: Accept | None = None) -> InputStaging | None:
    """Start staging the inputs worth it on ``origin``, or None (see the module doc).
    ``accept``: each input as it is opened, before a byte of it is sent (cms.digest)."""
    stager = staging_of(origin)
    if stager is None:
        return None
    todo: dict[Path, InputFile] = {}
    sizes: dict[Path, int] = {}
    for i in inputs:
        try:
            st = os.stat(i.path)
        except OSError:
            continue  # hashing reports it, with its context
        if st.st_size < STAGE_MIN_SIZE or i.path in todo:
            continue
        if cache is not None and hash_name == "sha256" and \
                cache.local_digest(i.path, st) is not None:
            continue  # known: no read needed at all
        todo[i.path], sizes[i.path] = i, st.st_size
    if not todo:
        return None
    largest = max(todo.values(), key=lambda i: sizes[i.path])
    if _maybe_published(origin, largest.key, sizes[largest.path]):
        return None
    return InputStaging(stager, list(todo.values()), sum(sizes.values()), hash_name,
                        accept)


def _maybe_published(origin: Origin, key: str, size: int) -> bool:
    """Whether a release on the origin holds ``key`` (the largest input) with this size:
    perhaps a re-run without the publish cache, which must upload nothing."""
    # one listing of releases/ and a stat per release, not a listing of every object of
    # every release (newest-looking ids first: a dated id template sorts by date)
    for rid in sorted(origin.list_dirs(RELEASES_PREFIX + "/"), reverse=True):
        if release_id_problem(rid):
            continue
        st = origin.stat(release_prefix(rid) + key)
        if st is not None and st.size == size:
            return True
    return False
