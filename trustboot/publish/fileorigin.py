"""``file:///dir``: a directory that any web server serves.

Every key is resolved one segment at a time from a descriptor of the root with
``O_NOFOLLOW``, so a symlink planted anywhere in the tree (``releases -> /etc``) makes the
operation fail instead of leaving the directory. Objects are written to a temp file in their
final directory, fsync'ed and renamed over the key: a web server reading at the same time
sees the old object or the complete new one. Modes are explicit (0644 files, 0755 dirs),
never the umask's. Staging (``origin.StagingOrigin``) writes a file being hashed to a
temporary file at the root and renames it to its key later (a copy if the key is on
another file system); leftovers of a killed run are swept like every ``.tb-tmp.`` file.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from trustboot import fsutil, jsonin
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish.lock import (
    LOCK_STALE_AFTER,
    GuardedByLock,
    HeldLock,
    lock_is_stale,
    origin_lock,
    swap_record,
)
from trustboot.publish.manifest import RELEASES_PREFIX
from trustboot.publish.origin import (
    NotServed,
    ObjectStat,
    OriginOptions,
    Staged,
    TooLarge,
    check_key,
    check_prefix,
    key_problem,
)
from trustboot.publish.stream import DigestingUpload, StagesUploads, hashed_chunks

FILE_MODE = 0o644
DIR_MODE = 0o755
CHUNK = 1 << 20
LOCK_NAME = ".trustboot-publish.lock"
TMP_PREFIX = ".tb-tmp."
UNSAFE_SHARED_OPTION = "--unsafe-shared-origin"
_STAGED_NAME = re.compile(re.escape(TMP_PREFIX) + r"[0-9a-f]{16}\.[^/]+")


def directory_of(url: str) -> Path:
    """The directory a ``file://`` origin URL names, percent-decoded exactly as the origin
    opens it (a check of where it writes must look at this path, never the URL's text:
    ``%2e%2e`` is ``..`` here)."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query \
            or parts.fragment:
        raise ConfigError(f"origin {url!r} is not a file:///ABSOLUTE/DIR URL")
    path = unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise ConfigError(f"origin {url!r} needs an absolute path: file:///srv/boot")
    return Path(path)


class FileOrigin(StagesUploads, GuardedByLock):
    """An origin in a local directory (``file:///srv/boot``)."""

    def __init__(self, url: str, options: OriginOptions) -> None:
        self.root = directory_of(url)
        self.url = "file://" + str(self.root).rstrip("/") + "/"
        self.options = options
        self._root_fd: int | None = None

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> FileOrigin:
        if not self.options.unsafe_shared_origin:
            # whoever can change a directory above the root can move it away after the
            # read-back and put theirs in its place (a link of theirs: point it elsewhere);
            # checked before any is created
            self._check_parents()
        if self.options.create_root:
            # every directory this creates gets DIR_MODE, whatever the umask
            fsutil.make_dirs(self.root, DIR_MODE)
        elif not self.root.is_dir():
            raise OperationalError(
                f"origin directory {self.root} does not exist",
                hint="check the origin URL; the first `trustboot publish DIR file://...` "
                "creates it")
        try:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise OperationalError(f"cannot open origin directory {self.root}: "
                                   f"{exc.strerror or exc}") from None
        try:
            if not self.options.unsafe_shared_origin:
                # again, now that every directory exists: one another user made in a
                # missing place (in /tmp, say) between the first check and make_dirs, which
                # keeps an existing one, would hold ours (fsutil.make_output_dir does the same)
                self._check_parents()
            self._check_shared(self._root_fd, [])
        except BaseException:
            os.close(self._root_fd)
            self._root_fd = None
            raise
        return self

    def _check_parents(self) -> None:
        try:
            fsutil.check_parents(self.root, "origin directory")
        except ConfigError as exc:  # the way out of a directory shared on purpose, named
            exc.hint = (f"{exc.hint}; or, for a directory shared on purpose, "
                        f"{UNSAFE_SHARED_OPTION}")
            raise

    def __exit__(self, *exc: object) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def _root(self) -> int:
        if self._root_fd is None:
            raise RuntimeError("use the origin as a context manager")
        return self._root_fd

    def _fail(self, key: str, action: str, exc: OSError) -> OperationalError:
        if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
            return OperationalError(
                f"{self.url}{key}: {action} refused: a path segment is a symbolic link or "
                "not a directory", hint=f"remove links planted under {self.root}")
        hint = None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = f"free space on the file system of {self.root}, then run again (resumes)"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = f"make {self.root} writable for this user"
        elif exc.errno == errno.EINVAL:  # _open_read: a FIFO, device or directory there
            hint = (f"only trustboot writes under {self.root}: check who put it there, "
                    f"then remove it: rm {self.root / key}")
        return OperationalError(f"{self.url}{key}: {action} failed: {exc.strerror or exc}",
                                hint=hint)

    def _check_shared(self, fd: int, parts: list[str]) -> None:
        """Refuse a directory of the origin (descriptor ``fd``) that a user other than
        root and us owns or can write: they could rename what was just verified away and
        put their own objects (an older signed release, a hostile release.json) in its
        place, after the read-back. ``--unsafe-shared-origin`` allows it."""
        if self.options.unsafe_shared_origin:
            return
        st = os.fstat(fd)
        where = self.root.joinpath(*parts)
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"origin directory {where} is owned by uid {st.st_uid}, not by root or you: "
                "its owner can replace what trustboot publishes and verifies there",
                hint=f"chown {os.geteuid()} {where}, or publish to a directory of your own "
                     f"(a shared one only with {UNSAFE_SHARED_OPTION})")
        if st.st_mode & 0o022 and fsutil.others_can_write(Path(f"/proc/self/fd/{fd}"), st):
            raise ConfigError(
                f"origin directory {where} is writable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): they can replace what trustboot publishes "
                "and verifies there",
                hint=f"chmod go-w {where} (the web server needs only to read), or pass "
                     f"{UNSAFE_SHARED_OPTION} for a directory shared on purpose")

    def _dir(self, parts: list[str], *, create: bool) -> int:
        """A descriptor of the directory ``parts`` under the root, never through a link
        nor into one another user can change (_check_shared)."""
        fd = os.dup(self._root())
        try:
            for depth, seg in enumerate(parts, 1):
                if create:
                    try:
                        os.mkdir(seg, DIR_MODE, dir_fd=fd)
                    except FileExistsError:
                        pass
                    else:
                        os.chmod(seg, DIR_MODE, dir_fd=fd, follow_symlinks=False)
                nfd = os.open(seg, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
                self._check_shared(fd, parts[:depth])
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _split(self, key: str) -> tuple[list[str], str]:
        parts = check_key(key).split("/")
        return parts[:-1], parts[-1]

    def _open_read(self, key: str) -> int:
        dirs, name = self._split(key)
        dfd = self._dir(dirs, create=False)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        try:
            self._check_object(fd, st, key)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_object(self, fd: int, st: os.stat_result, key: str) -> None:
        """Refuse an object that a user other than root and us owns or can write (left
        from when the tree was shared, say): they could change it after it was verified,
        and an object already there is not uploaded again. --unsafe-shared-origin allows
        it, as for directories (_check_shared)."""
        if self.options.unsafe_shared_origin:
            return
        where = self.root / key
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"origin object {where} is owned by uid {st.st_uid}, not by root or you: "
                "its owner can change it after it was verified",
                hint=f"check it, then remove it (trustboot writes it again): rm {where}")
        if st.st_mode & 0o022 and fsutil.others_can_write(Path(f"/proc/self/fd/{fd}"), st):
            raise ConfigError(
                f"origin object {where} is writable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): they can change it after it was verified",
                hint=f"check it, then chmod go-w {where} (or remove it)")

    # -- objects --------------------------------------------------------------------
    def stat(self, key: str) -> ObjectStat | None:
        try:
            fd = self._open_read(key)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(key, "stat", exc) from None
        try:
            st = os.fstat(fd)
            # like nginx's ETag, plus the inode: a rename onto the key changes it
            return ObjectStat(size=st.st_size, sha256=None,
                              etag=f'"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"')
        finally:
            os.close(fd)

    def _write_temp(self, dfd: int, key: str, name: str, chunks: Iterator[bytes], *,
                    sha256: str | None, progress: Callable[[int], None] | None) -> str:
        """A new temporary file in the directory ``dfd`` holding ``chunks``, fsync'ed;
        its name (removed again on any failure)."""
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}.{name}"[:255]
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         FILE_MODE, dir_fd=dfd)
            try:
                os.fchmod(fd, FILE_MODE)
                digest = hashlib.sha256()
                for chunk in chunks:
                    digest.update(chunk)
                    fsutil.write_fully(fd, chunk)
                    if progress:
                        progress(len(chunk))
                if sha256 is not None and digest.hexdigest() != sha256:
                    raise OperationalError(
                        f"{key}: the local file changed while it was uploaded (sha256 "
                        f"{digest.hexdigest()} instead of {sha256})",
                        hint="do not modify the release directory during a publish")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise self._fail(key, "writing", exc) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        return tmp

    def _write(self, key: str, chunks: Iterator[bytes], *, sha256: str | None,
               progress: Callable[[int], None] | None = None) -> None:
        dirs, name = self._split(key)
        try:
            dfd = self._dir(dirs, create=True)
        except OSError as exc:
            raise self._fail(key, "creating its directory", exc) from None
        try:
            tmp = self._write_temp(dfd, key, name, chunks, sha256=sha256, progress=progress)
            try:
                self._check_lock()
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.fsync(dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise self._fail(key, "writing", exc) from None
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
        finally:
            os.close(dfd)

    def put_file(self, key: str, path: Path, *, size: int, sha256: str,
                 progress: Callable[[int], None] | None = None) -> None:
        # hashed_chunks checks the digest before handing out the last chunk
        self._write(key, hashed_chunks(path, size=size, sha256=sha256, progress=progress),
                    sha256=None)

    def put_bytes(self, key: str, data: bytes, *, sha256: str) -> None:
        self._write(key, iter([data]), sha256=sha256)

    # -- staging (origin.StagingOrigin): a temporary file at the root, written while the
    # input is hashed, renamed to its key later; remove_stale_temps sweeps leftovers
    # (stage_file: stream.StagesUploads)
    def _store_staging(self, name: str, upload: DigestingUpload) -> str:
        return self._write_temp(self._root(), name, name.rpartition("/")[2],
                                upload.chunks(), sha256=None, progress=None)

    def _check_staged(self, staged: Staged) -> None:
        if not _STAGED_NAME.fullmatch(staged.token) or staged.done:
            raise ValueError(f"{staged.token!r} is not a pending staged object")

    def place_staged(self, staged: Staged, key: str) -> None:
        self._check_staged(staged)
        dirs, name = self._split(key)
        root = self._root()
        try:
            dfd = self._dir(dirs, create=True)
        except OSError as exc:
            self.discard_staged(staged)
            raise self._fail(key, "creating its directory", exc) from None
        try:
            self._check_lock()
            os.rename(staged.token, name, src_dir_fd=root, dst_dir_fd=dfd)
            os.fsync(dfd)
            staged.done = True
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                self.discard_staged(staged)
                raise self._fail(key, "writing", exc) from None
            # another file system mounted under the origin: copy (one more write)
            try:
                self._write(key, self.read(staged.token, max_size=staged.size),
                            sha256=staged.sha256)
            finally:
                self.discard_staged(staged)
        finally:
            os.close(dfd)

    def discard_staged(self, staged: Staged) -> None:
        if not staged.done:
            self._check_staged(staged)
            staged.done = True
            with contextlib.suppress(OSError):
                os.unlink(staged.token, dir_fd=self._root())

    def read(self, key: str, *, max_size: int) -> Iterator[bytes]:
        try:
            fd = self._open_read(key)
        except FileNotFoundError:
            # gone (deleted since it was listed or stat'ed): what an HTTP origin's 404
            # is, so the caller judges it (a release.json.sig unread), not the run's
            # I/O failure; any other error stays one
            raise NotServed(f"{self.url}{key} does not exist on the origin",
                            status=404) from None
        except OSError as exc:
            raise self._fail(key, "reading", exc) from None
        return self._chunks(fd, key, max_size)

    def _chunks(self, fd: int, key: str, max_size: int) -> Iterator[bytes]:
        total = 0
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    return
                total += len(chunk)
                if total > max_size:
                    raise TooLarge(f"{self.url}{key} is larger than {max_size} bytes")
                yield chunk
        finally:
            os.close(fd)

    def list(self, prefix: str) -> list[str]:
        return self._listing(prefix, self._walk)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        def level(dfd: int, base: str, out: builtins.list[str]) -> None:
            out.extend(entry.name for _key, entry in self._entries(dfd, base)
                       if entry.is_dir(follow_symlinks=False))
        return self._listing(prefix, level)

    def _listing(self, prefix: str,
                 collect: Callable[[int, str, builtins.list[str]], None]) -> builtins.list[str]:
        """``collect(dir fd, its key, out)`` run on the directory ``prefix`` names."""
        check_prefix(prefix)
        base = prefix.rstrip("/")
        parts = base.split("/") if base else []
        out: builtins.list[str] = []
        try:
            dfd = self._dir(parts, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise self._fail(prefix, "listing", exc) from None
        try:
            collect(dfd, base, out)
        finally:
            os.close(dfd)
        return sorted(out)

    @staticmethod
    def _entries(dfd: int, base: str) -> builtins.list[tuple[str, os.DirEntry[str]]]:
        """(key, entry) of what the directory ``dfd`` (key ``base``) holds that a listing
        shows: no temporary files, no lock, no name ``check_key`` refuses."""
        with os.scandir(dfd) as it:
            entries = list(it)
        out = []
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX) or entry.name == LOCK_NAME:
                continue
            key = f"{base}/{entry.name}" if base else entry.name
            if key_problem(key):
                continue  # not something we wrote; never hand it on
            out.append((key, entry))
        return out

    def _walk(self, dfd: int, base: str, out: builtins.list[str]) -> None:
        for key, entry in self._entries(dfd, base):
            if entry.is_dir(follow_symlinks=False):
                self._descend(dfd, entry.name, key, self._walk, out)
            elif entry.is_file(follow_symlinks=False):
                out.append(key)

    def _descend(self, dfd: int, name: str, key: str,
                 collect: Callable[[int, str, builtins.list[str]], None],
                 out: builtins.list[str]) -> None:
        """``collect(its fd, key, out)`` on the subdirectory ``name`` of ``dfd`` (key
        ``key``), opened through ``dfd`` and never through a link."""
        try:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        except OSError as exc:  # another user's directory we cannot read, say
            raise self._fail(key, "listing", exc) from None
        try:
            collect(sub, key, out)
        finally:
            os.close(sub)

    def remove_stale_temps(self, older_than: float) -> builtins.list[str]:
        """Temporary files of killed uploads (``.tb-tmp.*`` in any directory), and the
        directories that removing them left empty (a killed upload's release folder
        would otherwise stay, holding nothing); never the root nor releases/."""
        removed: builtins.list[str] = []
        cutoff = time.time() - older_than
        try:
            dfd = self._dir([], create=False)
        except OSError:
            return removed
        try:
            self._collect(dfd, "", cutoff, removed)
        finally:
            os.close(dfd)
        return sorted(removed)

    def _collect(self, dfd: int, base: str, cutoff: float,
                 removed: builtins.list[str]) -> bool:
        """Remove the stale temporary files under ``dfd`` (key ``base``); True when it
        removed something there (a file, or a directory it emptied)."""
        with os.scandir(dfd) as it:
            entries = list(it)
        emptied = False
        for entry in entries:
            key = f"{base}/{entry.name}" if base else entry.name
            if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.name, dir_fd=dfd)
                        removed.append(key)
                        emptied = True
            elif entry.is_dir(follow_symlinks=False) and not key_problem(key) \
                    and entry.name != LOCK_NAME:
                try:
                    sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=dfd)
                except OSError:
                    continue  # a sweep of our own leftovers: what we cannot open holds none
                try:
                    swept = self._collect(sub, key, cutoff, removed)
                finally:
                    os.close(sub)
                # only a directory this sweep emptied, and only once empty (rmdir
                # refuses any other); releases/ stays, as the root does
                if swept and key != RELEASES_PREFIX:
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.name, dir_fd=dfd)
                        emptied = True
        return emptied

    def folder_age(self, prefix: str) -> float | None:
        # by each entry's mtime against this host's clock, as remove_stale_temps judges
        parts = check_prefix(prefix).rstrip("/").split("/")
        try:
            dfd = self._dir(parts, create=False)
        except OSError:
            return None
        try:
            newest = self._newest(dfd)
        finally:
            os.close(dfd)
        return None if newest is None else time.time() - newest

    def _newest(self, dfd: int) -> float | None:
        """The newest mtime of the directory ``dfd`` and of everything below it, temp
        files and names ``list`` leaves out included (links not followed); None when
        some entry cannot be looked at."""
        try:
            newest = os.fstat(dfd).st_mtime
            with os.scandir(dfd) as it:
                entries = list(it)
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=dfd)
                    try:
                        below = self._newest(sub)
                    finally:
                        os.close(sub)
                    if below is None:
                        return None
                    newest = max(newest, below)
                else:
                    newest = max(newest, st.st_mtime)
        except OSError:
            return None
        return newest

    def unlisted(self, prefix: str) -> builtins.list[str]:
        def collect(dfd: int, base: str, out: builtins.list[str]) -> None:
            with os.scandir(dfd) as it:
                entries = list(it)
            for entry in entries:
                key = f"{base}/{entry.name}"
                if entry.name.startswith(TMP_PREFIX) or entry.name == LOCK_NAME \
                        or key_problem(key):
                    out.append(key)
                elif entry.is_dir(follow_symlinks=False):
                    self._descend(dfd, entry.name, key, collect, out)
                elif not entry.is_file(follow_symlinks=False):
                    out.append(key)  # a link, a FIFO, a socket: never listed nor deleted
        return self._listing(check_prefix(prefix).rstrip("/") + "/", collect)

    def remove_empty_folder(self, prefix: str) -> bool:
        parts = check_prefix(prefix).rstrip("/").split("/")
        self._check_lock()
        try:
            parent = self._dir(parts[:-1], create=False)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise self._fail(prefix, "removing", exc) from None
        try:
            os.rmdir(parts[-1], dir_fd=parent)  # the kernel refuses one that holds anything
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise self._fail(prefix, "removing", exc) from None
        finally:
            os.close(parent)
        return True

    def delete(self, key: str) -> None:
        dirs, name = self._split(key)
        self._check_lock()
        try:
            dfd = self._dir(dirs, create=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail(key, "deleting", exc) from None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
        except OSError as exc:
            raise self._fail(key, "deleting", exc) from None
        finally:
            os.close(dfd)
        # drop directories the deletion emptied (a pruned release leaves nothing behind)
        while dirs:
            try:
                parent = self._dir(dirs[:-1], create=False)
            except OSError:
                break  # changed meanwhile: the object is gone, leave the directories be
            try:
                os.rmdir(dirs[-1], dir_fd=parent)
            except OSError:
                break
            finally:
                os.close(parent)
            dirs = dirs[:-1]

    def copy_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        # each copy is already one atomic replace; nothing to stage before them
        self._check_lock(confirm=True)  # the entry switch: never on a lost lock
        for src_key, dst_key in pairs:
            self.copy(src_key, dst_key)

    def copy(self, src_key: str, dst_key: str) -> None:
        # the source descriptor stays on the inode it opened: a consistent copy even if
        # src_key is replaced meanwhile
        self._write(dst_key, self.read(src_key, max_size=1 << 40), sha256=None)

    # -- lock -----------------------------------------------------------------------
    def lock(self, owner: str, *, stale_after: float = LOCK_STALE_AFTER,
             refresh: float | None = None) -> AbstractContextManager[HeldLock]:
        root = self._root()

        def try_create(body: bytes) -> bool:
            # The record is written first and the lock appears whole (link fails if it
            # exists): created empty and written after, a second publisher arriving in
            # between judged the empty lock a crashed holder's and took it over.
            tmp = self._write_temp(root, LOCK_NAME, "lock", iter([body]), sha256=None,
                                   progress=None)
            try:
                os.link(tmp, LOCK_NAME, src_dir_fd=root, dst_dir_fd=root,
                        follow_symlinks=False)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise self._fail(LOCK_NAME, "locking", exc) from None
                return create_then_write(body)  # a file system without hard links
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=root)
            return True

        def create_then_write(body: bytes) -> bool:
            try:
                fd = os.open(LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             FILE_MODE, dir_fd=root)
            except FileExistsError:
                return False
            except OSError as exc:
                raise self._fail(LOCK_NAME, "locking", exc) from None
            try:
                os.fchmod(fd, FILE_MODE)
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True

        def take() -> str | None:
            aside = f"{TMP_PREFIX}{secrets.token_hex(8)}.refresh-lock"
            try:
                os.rename(LOCK_NAME, aside, src_dir_fd=root, dst_dir_fd=root)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise self._fail(LOCK_NAME, "refreshing the lock", exc) from None
            return aside

        def give_back(aside: str) -> None:
            with contextlib.suppress(FileExistsError):  # a newcomer's lock stays
                self._link_or_rename(aside, LOCK_NAME)

        def drop(aside: str) -> None:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(aside, dir_fd=root)

        def rewrite(body: bytes) -> bool:
            # compare-and-swap: never over a record that is not ours (see lock.py)
            return swap_record(body, take=take, read=self._read_lock, give_back=give_back,
                               drop=drop, create=try_create)

        return self._guarded(origin_lock(
            owner, where=self.url, remove_hint=f"remove {self.root / LOCK_NAME}",
            try_create=try_create, read=self._read_lock,
            break_stale=lambda seen, _body: self._break_lock(seen, stale_after),
            release=lambda: os.unlink(LOCK_NAME, dir_fd=root), rewrite=rewrite,
            stale_after=stale_after, refresh=refresh))

    def _read_lock(self, name: str = LOCK_NAME) -> object:
        """The lock record ``name`` holds; None if it is gone. Anything but a regular file
        (a link, a FIFO someone planted: opened without blocking) is "unreadable", a
        stale lock that is moved aside, never followed or waited on."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=self._root())
        except FileNotFoundError:
            return None
        except OSError:
            return "unreadable"
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "unreadable"
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        try:
            return jsonin.loads(data)
        except ValueError:
            return "unreadable"

    def _link_or_rename(self, src: str, dst: str) -> None:
        """``src`` also as ``dst``, never over an existing ``dst`` (FileExistsError): a
        hard link; on a file system without them, a rename after a look (not atomic)."""
        root = self._root()
        try:
            os.link(src, dst, src_dir_fd=root, dst_dir_fd=root, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            try:
                os.stat(dst, dir_fd=root, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(src, dst, src_dir_fd=root, dst_dir_fd=root)
                return
            raise FileExistsError(errno.EEXIST, "exists", dst) from None

    def _break_lock(self, seen: object, stale_after: float) -> bool:
        """Move a stale lock aside, then make sure it is the one we judged stale; False:
        the next attempt creates ours."""
        aside = f"{TMP_PREFIX}{secrets.token_hex(8)}.stale-lock"
        root = self._root()
        try:
            os.rename(LOCK_NAME, aside, src_dir_fd=root, dst_dir_fd=root)
        except FileNotFoundError:
            return False
        moved = self._read_lock(aside)
        if moved != seen and not lock_is_stale(moved, now=time.time(),
                                               stale_after=stale_after):
            # someone else's fresh lock: put it back unless a new one appeared meanwhile
            with contextlib.suppress(OSError):
                self._link_or_rename(aside, LOCK_NAME)
        try:
            os.unlink(aside, dir_fd=root)
        except FileNotFoundError:
            pass
        except IsADirectoryError:  # a directory planted as the lock (a full one stays)
            with contextlib.suppress(OSError):
                os.rmdir(aside, dir_fd=root)
        return False

    def public_url(self, key: str) -> str | None:
        base = self.options.public_url
        if not base:
            return None
        return base.rstrip("/") + "/" + check_key(key)

    def __repr__(self) -> str:
        return f"FileOrigin({self.url!r})"
