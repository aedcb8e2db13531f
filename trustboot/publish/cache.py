"""A local memo that makes re-publishing an unchanged release cheap, without trusting it
for anything iPXE relies on.

* local digests, keyed by the file's identity (path, device, inode, size, mtime_ns,
  ctime_ns; ctime cannot be set back by a user), so an unchanged 1 GiB kernel is not hashed
  again;
* objects this machine fully read back and verified, keyed by origin URL, key, size and
  the origin's ETag (nginx: mtime + size; S3: the content MD5). A later run skips the full
  read-back of such an object when HEAD still reports the same size and ETag. Signatures
  and the entry script are always fetched and verified in full, and a swapped object with
  a forged ETag still fails imgverify at boot: the memo costs at most an early warning,
  never integrity. ``--full-readback`` ignores it.

Any problem reading the memo empties it: it is a cache, never an input that can fail a run.
A cache whose parents another user can change (root running with a user's HOME or
XDG_CACHE_HOME, a link in ~/.cache) is not used at all: its owner could point it at any
file root then creates or reads. ``PublishCache.problem`` says why, for the caller to warn.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from trustboot import jsonin
from trustboot.errors import ConfigError, TrustbootError
from trustboot.fsutil import atomic_write, check_parents, prepare_private_dir

MAX_ENTRIES = 20_000
MAX_BYTES = 16 << 20


def default_cache_path() -> Path:
    """$TRUSTBOOT_PUBLISH_CACHE, else $XDG_CACHE_HOME/trustboot/publish-cache.json."""
    if os.environ.get("TRUSTBOOT_PUBLISH_CACHE"):
        return Path(os.environ["TRUSTBOOT_PUBLISH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trustboot" / "publish-cache.json"


def _entries(table: dict[str, Any]) -> dict[str, list[Any]]:
    """The entries of a loaded table that have the shape this code writes (a list ending
    in its time): save() sorts by that time, and a damaged file must only cost time."""
    return {k: v for k, v in table.items() if isinstance(v, list) and v
            and isinstance(v[-1], int | float) and not isinstance(v[-1], bool)}


class PublishCache:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.local: dict[str, list[Any]] = {}
        self.verified: dict[str, list[Any]] = {}
        self._dirty = False
        # why the cache is not used (None: it is, or none was asked for)
        self.problem: str | None = None
        if path is not None and self._safe_place(path):
            self._load(path)

    def _safe_place(self, path: Path) -> bool:
        """Whether only root and we can change the directories above the cache (as for
        the iPXE build cache); if not, the cache is dropped for this run."""
        try:
            check_parents(path, "publish cache")
        except ConfigError as exc:
            self.path = None
            self.problem = (f"{exc.message}; publishing without the cache (every file is "
                            "hashed and read back in full)"
                            + (f"\n  hint: {exc.hint}" if exc.hint else ""))
            return False
        return True

    def _load(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)
                # whoever can write the cache chooses what is signed without being hashed
                # (and what is not read back): only our own private regular file counts
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() \
                        or st.st_mode & 0o077:
                    return
                data = jsonin.loads(fh.read(MAX_BYTES + 1))
            if isinstance(data, dict) and data.get("version") == 1:
                local, verified = data.get("local"), data.get("verified")
                if isinstance(local, dict) and isinstance(verified, dict):
                    self.local, self.verified = _entries(local), _entries(verified)
        except (OSError, ValueError):
            pass

    @staticmethod
    def _identity(path: Path, st: os.stat_result) -> str:
        return json.dumps([str(path.resolve()), st.st_dev, st.st_ino, st.st_size,
                           st.st_mtime_ns, st.st_ctime_ns])

    def local_digest(self, path: Path, st: os.stat_result) -> str | None:
        entry = self.local.get(self._identity(path, st))
        return entry[0] if isinstance(entry, list) and entry and isinstance(entry[0], str) \
            else None

    def remember_local(self, path: Path, st: os.stat_result, sha256: str) -> None:
        self.local[self._identity(path, st)] = [sha256, time.time()]
        self._dirty = True

    @staticmethod
    def _object(origin: str, key: str) -> str:
        return f"{origin}\n{key}"

    def is_verified(self, origin: str, key: str, *, size: int, etag: str | None,
                    sha256: str) -> bool:
        if not etag:
            return False
        entry = self.verified.get(self._object(origin, key))
        return isinstance(entry, list) and entry[:3] == [size, etag, sha256]

    def remember_verified(self, origin: str, key: str, *, size: int, etag: str | None,
                          sha256: str) -> None:
        if etag:
            self.verified[self._object(origin, key)] = [size, etag, sha256, time.time()]
            self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        for table in (self.local, self.verified):
            if len(table) > MAX_ENTRIES:  # drop the oldest
                for k in sorted(table, key=lambda k: table[k][-1])[: len(table) - MAX_ENTRIES]:
                    del table[k]
        try:
            # again: the parents may have changed since the cache was read
            prepare_private_dir(self.path.parent, "publish cache")
            atomic_write(self.path, json.dumps({"version": 1, "local": self.local,
                                                "verified": self.verified}).encode(),
                         mode=0o600)
        except (OSError, TrustbootError):
            pass  # a cache that cannot be written only costs time next run
        self._dirty = False
