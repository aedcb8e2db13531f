"""Atomic writes, private files, explicit modes and capped reads.

Every write that matters goes through a temp file in the same directory, fsync (for many
files at once, one syncfs of their filesystem: cms.sign.StagedWrites), then os.replace, so
a process killed at any moment leaves either the old or the new file.
Private files are created with O_EXCL and mode 0600 from the start (never chmod'ed after
the secret is already on disk) inside 0700 directories. Every file and directory gets an
explicit mode: nothing here depends on the caller's umask. Files named by users are read
through :func:`read_capped`, which refuses devices and FIFOs before reading a byte.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import BinaryIO

from trustboot.errors import ConfigError, OperationalError

# tempfile and shutil (with bz2, lzma, random) are imported where a work directory or a
# randomly named temp file is made: `trustboot sign` names its temp files itself and
# never needs them, and its start-up is paid once per CI call.

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_DIR_MODE = 0o755
PUBLIC_FILE_MODE = 0o644
# Leftover temp files (".NAME.XXXX.tmp") older than this belong to a killed run.
STALE_TMP_SECONDS = 3600.0


def make_dirs(path: Path, mode: int = PUBLIC_DIR_MODE, *,
              created: list[Path] | None = None) -> Path:
    """``mkdir -p`` where every directory this call creates gets exactly ``mode``.

    Existing directories are left as they are (callers that must trust one check it).
    ``created`` gets each directory this call made, parents first (one a concurrent run
    made meanwhile is not ours: left out), for a caller that undoes a failed run.
    Raises OperationalError naming the path when a component is not a directory.
    """
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
            continue
        except OSError as exc:  # ENOTDIR: a file somewhere above, EACCES ...
            raise OperationalError(f"cannot create directory {path}: {exc.strerror}",
                                   hint="check the path and the permissions of its "
                                   "parents") from None
        if not stat.S_ISDIR(st.st_mode):
            raise OperationalError(
                f"cannot create directory {path}: {probe} exists and is not a directory",
                hint="choose another path, or move that file away",
            )
        break
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise OperationalError(
                    f"cannot create directory {path}: {directory} is not a directory"
                ) from None
            continue  # created meanwhile by a concurrent run: leave its mode to it
        except OSError as exc:
            raise OperationalError(
                f"cannot create directory {directory}: {exc.strerror}",
                hint="check the path and the permissions of its parent",
            ) from None
        os.chmod(directory, mode)  # mkdir's mode was narrowed by the umask
        if created is not None:
            created.append(directory)
    return path


def make_output_dir(path: Path, what: str) -> Path:
    """``make_dirs(path)`` for output others must not be able to swap before it is used
    (enrollment keys, firmware, trust anchors): an existing directory (or where a link to
    one leads) must be ours and not writable by group or others, and so must every
    directory above it (:func:`check_parents`) (ConfigError)."""
    check_parents(path, what)  # nothing created under another's directory
    make_dirs(path)
    # and again, now that every directory exists: one another user made in a missing
    # place between the first check and make_dirs (which keeps an existing one) would
    # hold ours, to be moved away with what we write and replaced
    check_parents(path, what)
    check_owned_dir(path, what)
    return Path(path)


def check_parents(path: Path, what: str) -> None:
    """Refuse ``path`` when a directory above it could be changed by a user other than
    root and us: one owned by another user, or writable by others or a group with anyone
    else in it (:func:`trustboot.writers.mode_writers`: our own user-private group is
    not) without the sticky bit (in a sticky directory like /tmp others can only remove
    their own entries).
    Whoever can write a parent can rename ``path`` away, with what we wrote in it, and
    put a directory of theirs in its place; its own mode and owner cannot prevent that.
    Every directory :func:`dirs_above` names is checked; those that do not exist yet are
    skipped (we create them)."""
    path = Path(path)
    me = os.geteuid()
    for parent, st in dirs_above(path, what):
        if st.st_uid not in (0, me):
            raise ConfigError(
                f"{what} {path}: {parent} above it is owned by uid {st.st_uid}, not by "
                "root or you: its owner can replace what trustboot writes there",
                hint="choose a directory whose parents only root and you can change")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX \
                and others_can_write(parent, st):
            raise ConfigError(
                f"{what} {path}: {parent} above it is writable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): they can move it away with what "
                "trustboot wrote and put their own in its place",
                hint=f"chmod go-w {parent}  (or chmod +t, as /tmp), or choose another "
                     "directory")


def dirs_above(path: Path, what: str, *, lookup_first: bool = False
               ) -> Iterator[tuple[Path, os.stat_result]]:
    """Each directory above ``path`` that exists, once, with its stat: the parents of
    ``path`` as written and of where it really leads, and every directory its lookup
    passes through (:func:`_walk`, which refuses another user's link on the way).
    ``lookup_first``: those of the lookup first, so the first one named is one the
    kernel really goes through. ConfigError when one cannot be checked."""
    path = Path(path)
    walked = _walk(path, what)
    written = [*Path(os.path.abspath(path)).parents, *Path(os.path.realpath(path)).parents]
    seen: set[Path] = set()
    for parent in (*walked, *written) if lookup_first else (*written, *walked):
        if parent in seen:
            continue
        seen.add(parent)
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"{what} {path}: cannot check {parent}: {exc.strerror}",
                              hint="check the path and its permissions") from None
        yield parent, st


def others_can_write(path: Path, st: os.stat_result) -> bool:
    """Whether group or others can write ``path`` (stat ``st``) with anyone but root and
    us among them: group write of our own user-private group (umask 002) is no one's."""
    from trustboot.writers import mode_writers  # (it imports this module)

    return bool(mode_writers(str(path), st))


def _walk(path: Path, what: str) -> list[Path]:
    """The directories ``path`` is looked up through, as the kernel resolves it (every
    link followed, ``..`` after a link meaning the link target's parent), until a
    component that does not exist. A link on the way owned by a user other than root and
    us is refused: in a sticky directory (/tmp) its owner can replace it at any time, so
    every check made through it says nothing about where it leads a moment later."""
    me = os.geteuid()
    # (an absolute path needs no getcwd, which fails when the directory run from is gone)
    start = str(path) if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    pending = list(reversed(start.split("/")))
    current = "/"
    dirs: list[Path] = []
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        step = os.path.join(current, name)
        dirs.append(Path(current))
        try:
            st = os.lstat(step)
        except OSError:
            break  # missing (we create it), or not a directory: the caller's error
        if not stat.S_ISLNK(st.st_mode):
            current = step
            continue
        if st.st_uid not in (0, me):
            raise ConfigError(
                f"{what} {path}: {step} on the way to it is a symbolic link owned by uid "
                f"{st.st_uid}, not by root or you: its owner decides where it leads",
                hint=f"use a path without that link (where it leads now: "
                     f"{os.path.realpath(step)})")
        links += 1
        if links > 40:
            break  # a loop: the kernel refuses it (ELOOP) when the path is used
        try:
            target = os.readlink(step)
        except OSError:
            break  # replaced meanwhile: the lookups below report what is there now
        if target.startswith("/"):
            current = "/"
        pending.extend(reversed(target.split("/")))
    return dirs


def create_file(path: Path, mode: int = PUBLIC_FILE_MODE) -> BinaryIO:
    """Open ``path`` for writing (created or truncated) with exactly ``mode``, never
    through a link: for output streamed in pieces, where atomic_write would hold it all."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def open_beneath(root: Path, rel: str, flags: int = os.O_RDONLY,
                 mode: int = PRIVATE_FILE_MODE) -> int:
    """Open ``rel`` below the directory ``root`` one component at a time, never through a
    symbolic link: for a tree another program (an iPXE tree's make) could change, where
    a link planted anywhere on the way would lead us to a host file. Returns the
    descriptor. OSError ELOOP when a component is a link, ENOTDIR when one on the way is
    not a directory; ``rel`` is a relative path of plain names (ValueError otherwise)."""
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"open_beneath: {rel!r} is not a relative path of plain names")

    def step(dfd: int, name: str, step_flags: int) -> int:
        try:
            return os.open(name, step_flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except NotADirectoryError:
            # a link to a directory fails this way too when O_DIRECTORY is asked for
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP),
                              str(Path(root, rel))) from None
            raise

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            sub = step(fd, part, os.O_RDONLY | os.O_DIRECTORY)
            os.close(fd)
            fd = sub
        return step(fd, parts[-1], flags)
    finally:
        os.close(fd)


def read_capped(path: Path, limit: int, what: str, *, nofollow: bool = False,
                private: bool = False) -> bytes:
    """Read a regular file of at most ``limit`` bytes; ConfigError naming ``what`` otherwise.

    The file is opened non-blocking (a FIFO cannot hang us) and checked with fstat before
    anything is read, so /dev/zero, FIFOs and directories are refused unread. With
    ``nofollow`` a symbolic link in the last component is refused too; with ``private``
    (a secret: passphrase, PIN, credentials) a file group or others may read or write is
    refused, judged on the file opened.
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except ValueError:
        # a NUL byte in the name (from a recipe, a policy, a manifest): no such file can
        # exist, and the OS call raises ValueError, not OSError
        raise ConfigError(f"{what} {path} has a NUL byte in its name",
                          hint="no file name holds a NUL byte: fix the path") from None
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", hint="check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and nofollow:
            raise ConfigError(
                f"{what} {path} is a symbolic link, where a link is never expected",
                hint=f"replace the link with the file itself, or check who created {path}",
            ) from None
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}",
                          hint="check the path and its permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                f"{what} {path} is not a regular file",
                hint="pass a regular file (not a directory, device, FIFO or socket)",
            )
        if private and (shared := _shared_mode(st, path, what)) is not None:
            raise shared
        if st.st_size > limit:
            raise ConfigError(f"{what} {path} is larger than {limit} bytes",
                              hint=f"a {what} is never that large: check the path")
        # Regular files ignore O_NONBLOCK; read one byte past the cap to catch growth.
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise ConfigError(f"{what} {path} is larger than {limit} bytes",
                              hint=f"a {what} is never that large: check the path")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def check_not_link(path: Path, what: str) -> None:
    """Refuse a symbolic link where only a file the caller created belongs."""
    if Path(path).is_symlink():
        raise ConfigError(
            f"{what} {path} is a symbolic link, where a link is never expected",
            hint=f"remove the link (and check who created it): rm {path}",
        )


def check_owned_dir(path: Path, what: str, *, private: bool = False) -> None:
    """Refuse a directory that another user owns or that group/others can write.

    Anyone who can write to a directory can replace the files in it (a trust anchor, a
    log, a link to a secret), whatever the files' own modes say. ``private`` also refuses
    any access for group and others.
    """
    path = Path(path)
    try:
        st = os.stat(path)
        link = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a directory")
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
        # (in /tmp, say) its owner can point it at a directory of theirs at any time
        raise ConfigError(
            f"{what} {path} is a symbolic link owned by uid {link.st_uid}, not by you: "
            "its owner decides where it leads", hint=f"remove it and use a directory of "
                                                     f"your own: rm {path}")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}): "
            "its owner can replace what trustboot reads from it",
            hint=f"chown -R {os.geteuid()} {path}  (as root, after checking its contents)",
        )
    loose = mode & (0o077 if private else 0o022)
    if loose and (private or others_can_write(path, st)):
        fix = "chmod 700" if private else "chmod go-w"
        raise ConfigError(
            f"{what} {path} is {'accessible to' if private else 'writable by'} other users "
            f"(mode {mode:04o}): they could replace its files",
            hint=f"{fix} {path}",
        )


def raise_open_files_limit(needed: int) -> int:
    """Raise this process's soft limit of open files (RLIMIT_NOFILE) toward its hard
    limit, as far as ``needed`` (the usual soft limit, 1024, is far below the usual hard
    one); returns the soft limit now, at least ``needed`` when there is none."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return needed  # no limit: as many as are needed
    if soft >= needed:
        return soft
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft
        soft = want
    return soft


def open_checked_dir(path: Path, what: str, *, hint: str) -> int:
    """``path`` opened once (O_DIRECTORY), for writes that go through the descriptor
    (``dir_fd``): a link swapped in on the way after this returns is never followed.
    Refused (ConfigError with ``hint``, nothing left open) unless the directory opened
    is root's or ours and not writable by others, and every directory above it is so
    too (check_parents): otherwise its owner, or theirs, could put another directory in
    its place before we write. The directory's own checks are made on the descriptor,
    and the path is confirmed to lead to it after its parents were checked."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OperationalError(f"{what} {path}: cannot open it: {exc.strerror}",
                               hint="raise the limit of open files (ulimit -n)"
                               if exc.errno == errno.EMFILE
                               else "check the path and its permissions") from None
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"{what} {path} is owned by uid {st.st_uid}, not by root or you: its owner "
                "can replace what trustboot writes there", hint=hint)
        if st.st_mode & 0o022 and others_can_write(path, st):
            raise ConfigError(
                f"{what} {path} is writable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): they could replace what trustboot "
                "writes there", hint=hint)
        try:
            check_parents(path, what)
        except ConfigError as exc:
            raise ConfigError(exc.message, hint=f"{exc.hint}; or {hint}") from None
        try:
            now = os.stat(path)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise ConfigError(f"{what} {path} was replaced while it was checked",
                              hint=hint)
    except BaseException:
        os.close(fd)
        raise
    return fd


# A temp file's name stands for its target by the target's name up to this many bytes;
# a longer name is cut and a digest of it added, so ".NAME.TAG.tmp" stays within the
# filesystem's 255 bytes (a NAME.sig of 250 bytes is legal, its temp name was not).
_TEMP_NAME_ROOM = 200


def temp_stem(target_name: str) -> str:
    """What stands for ``target_name`` in its temp files' names (``.STEM.TAG.tmp``)."""
    raw = target_name.encode(errors="surrogateescape")
    if len(raw) <= _TEMP_NAME_ROOM:
        return target_name
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()[:16]
    cut = raw[:_TEMP_NAME_ROOM - 17].decode(errors="ignore")  # whole characters only
    return f"{cut}~{digest}"


def _temp_of(name: str, stems: Collection[str]) -> bool:
    """Whether ``name`` is a temp name of one of ``stems`` (temp_stem of the targets):
    ``.STEM.TAG.tmp`` (what write_temp makes), whatever dots STEM holds; a set lookup per
    dot, so a directory of many targets costs no more per entry than one of a few."""
    start = 1
    while (dot := name.find(".", start, len(name) - 4)) > 0:
        if name[1:dot] in stems:
            return True
        start = dot + 1
    return False


def remove_stale_temps(directory: Path, *, older_than: float = STALE_TMP_SECONDS,
                       targets: Collection[str] | None = None,
                       dir_fd: int | None = None) -> list[Path]:
    """Delete ``.*.tmp`` files a killed run left in ``directory``; returns what was removed.

    Only our own regular files (never a link, nor another user's file) unchanged for
    ``older_than`` seconds go: a younger one may belong to a concurrent run that is about
    to rename it. Judged by st_ctime, not st_mtime: a sign's backup of FILE.sig is a hard
    link to it, made just now but carrying the old file's mtime (link() and every write
    update the ctime, which is never older than the mtime). ``targets`` (a set, for
    speed): only the temps of files of these names (in a directory that is not ours,
    only the temps our own targets would have). Only
    the names that match are stat-ed; the listing and the removals go through one
    descriptor of the directory, so a directory swapped meanwhile is not swept
    (``dir_fd``: the caller's, see open_checked_dir).
    """
    removed: list[Path] = []
    stems = None if targets is None else {temp_stem(t) for t in targets}
    for dfd, name, _st in _own_old_entries(
            directory, lambda n: n.startswith(".") and n.endswith(".tmp")
            and (stems is None or _temp_of(n, stems)), stat.S_ISREG, older_than,
            dir_fd=dir_fd, by_ctime=True):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
            removed.append(Path(directory) / name)
    return removed


def _own_old_entries(directory: Path, match: Callable[[str], bool],
                     kind: Callable[[int], bool], older_than: float, *,
                     dir_fd: int | None = None, by_ctime: bool = False,
                     ) -> Iterator[tuple[int, str, os.stat_result]]:
    """(directory descriptor, name, lstat) of the entries of ``directory`` whose name
    ``match``es, of ``kind`` (stat.S_ISREG, S_ISDIR: a link is neither), this user's and
    unchanged for ``older_than`` seconds. Only matching names are stat-ed; everything
    goes through one descriptor of the directory (open while iterating), so a directory
    swapped meanwhile is not swept. Nothing when the directory does not exist.
    ``by_ctime``: unchanged judged by st_ctime (which an older file's hard link made
    just now has as now), else by st_mtime."""
    cutoff = time.time() - older_than
    try:
        # (a copy of the caller's descriptor: closed here like one opened here)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) \
            if dir_fd is None else os.dup(dir_fd)
    except FileNotFoundError:
        return
    try:
        with os.scandir(dfd) as entries:
            names = [e.name for e in entries if match(e.name)]
        me = os.geteuid()
        for name in names:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            changed = st.st_ctime if by_ctime else st.st_mtime
            if kind(st.st_mode) and st.st_uid == me and changed < cutoff:
                yield dfd, name, st
    finally:
        os.close(dfd)


# The private work directories of runs, in TMPDIR (tempfile.mkdtemp's names: the prefix
# and 8 characters); the only names remove_stale_work_dirs ever looks at.
WORK_DIR_PREFIXES = ("trustboot-release-", "trustboot-resign-", "trustboot-ovmf-")
_WORK_DIR_NAME = re.compile("(?:" + "|".join(map(re.escape, WORK_DIR_PREFIXES))
                            + ")[a-z0-9_]{8}")


@contextlib.contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A private (0700) work directory in TMPDIR for one run, removed at its end. The run
    holds an exclusive flock on it meanwhile: a run killed by SIGKILL cannot remove it,
    but its lock goes with it, which is how ``remove_stale_work_dirs`` tells its leftovers
    from a live run's directory (whatever their age). Those are swept first, here: every
    run that can leave one behind cleans up after the killed ones.

    TMPDIR must pass :func:`check_parents` (ConfigError before anything is created there):
    in one others can write without the sticky bit they could move the directory away
    mid-run and put theirs in its place, whose files the run then signs (resign's
    manifest, release's firmware) or hands on (an OVMF variable store)."""
    import shutil
    import tempfile

    if prefix not in WORK_DIR_PREFIXES:
        raise ValueError(f"work_dir: unknown prefix {prefix!r}")
    check_parents(Path(tempfile.gettempdir()) / f"{prefix}*", "work directory")
    remove_stale_work_dirs()
    path = Path(tempfile.mkdtemp(prefix=prefix))  # 0700 whatever the umask
    with holding_dir(path):
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def holding_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the directory ``path`` (one this run just made) for the
    block: a run killed by SIGKILL cannot remove its directory, but its lock goes with
    it, which is how :func:`remove_unlocked_dirs` tells its leftovers from a live run's.
    On a filesystem without flock nothing is held (and nothing there is swept)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_work_dirs(*, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Work directories (``work_dir``) that killed runs left in TMPDIR; what was removed.
    Only names ``work_dir`` makes (see :func:`remove_unlocked_dirs`)."""
    import tempfile

    return remove_unlocked_dirs(Path(tempfile.gettempdir()),
                                lambda n: _WORK_DIR_NAME.fullmatch(n) is not None,
                                older_than=older_than)


def remove_unlocked_dirs(directory: Path, match: Callable[[str], bool], *,
                         older_than: float) -> list[Path]:
    """Directories in ``directory`` that killed runs left (each held with
    :func:`holding_dir` while its run lived); returns what was removed.

    Only names that ``match``, only directories (never a link, never followed), only this
    user's, unchanged for ``older_than`` seconds and not locked by a live run. The listing
    and removals go through one descriptor of ``directory``, the directory's identity is
    checked on the descriptor that takes its lock, and the tree is removed without
    following links (shutil.rmtree with dir_fd)."""
    import shutil

    removed: list[Path] = []
    with contextlib.suppress(OSError):  # directory unreadable: nothing to sweep
        for dfd, name, st in _own_old_entries(directory, match, stat.S_ISDIR, older_than):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC, dir_fd=dfd)
            except OSError:
                continue
            try:
                held = os.fstat(fd)
                if (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino):
                    continue  # replaced since it was looked at
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live run's
                with contextlib.suppress(OSError):
                    shutil.rmtree(name, dir_fd=dfd)
                    removed.append(Path(directory) / name)
            finally:
                os.close(fd)
    return removed


def open_log(path: Path, flags: int, mode: int = PUBLIC_FILE_MODE) -> int:
    """Open a log file that must be ours (never through a link, a regular file): the
    descriptor, for appending or for reading its tail. ``O_NOFOLLOW`` is always added."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{path} is a symbolic link, where a link is never expected; not opened",
                hint=f"remove the link (and check who created it): rm {path}",
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file; not opened",
                          hint=f"move {path} away")
    return fd


def open_append(path: Path, *, mode: int = PUBLIC_FILE_MODE) -> int:
    """A log file that must be ours (never through a link), opened once both to read its
    tail and to append (``O_APPEND``); created with ``mode``."""
    fd = open_log(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, mode)
    if os.fstat(fd).st_size == 0:
        os.fchmod(fd, mode)  # the umask narrowed (or, under umask 000, did not) the mode
    return fd


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# quiet_writeback's bound: what one syncfs() may have to write besides the caller's files
QUIET_WRITEBACK = 16 << 20


def quiet_writeback(limit: int = QUIET_WRITEBACK, meminfo: Path = Path("/proc/meminfo")
                    ) -> bool:
    """Whether at most ``limit`` bytes of page cache wait to be written (Dirty plus
    Writeback, every filesystem): then one :func:`syncfs` writes little besides what the
    caller writes next. False when that is unknown (no /proc)."""
    try:
        with open(meminfo, "rb") as fh:
            text = fh.read(64 << 10)
    except OSError:
        return False
    seen, total = 0, 0
    for line in text.splitlines():
        name, _, rest = line.partition(b":")
        if name in (b"Dirty", b"Writeback"):
            value, _, unit = rest.strip().partition(b" ")
            if not value.isdigit() or unit not in (b"kB", b""):
                return False
            total += int(value) * (1024 if unit else 1)
            seen += 1
    return seen == 2 and total <= limit


def syncfs(path: Path) -> bool:
    """Flush everything written to the filesystem holding the directory ``path``, data and
    metadata, to stable storage (syncfs(2): one cache flush, where a fsync per file pays
    one each). False where the call does not exist (not Linux) or a sandbox refuses it
    (seccomp: ENOSYS, EPERM); OSError when it fails (Linux >= 5.8 reports writeback errors
    here as fsync does)."""
    call = _syncfs_call()
    if call is None:
        return False
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if call(fd) != 0:
            code = ctypes.get_errno()
            if code in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                return False
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
    return True


# Filesystems whose syncfs(2) commits and flushes everything a fsync(2) of each file would
# (their sync_fs: a journal commit or transaction and a cache flush; overlay syncs its upper
# layer's). Elsewhere (FUSE, NFS, vfat, ...) it may do less, so files there are fsynced.
SYNCFS_FILESYSTEMS = frozenset({"ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "overlay"})


def filesystem_type(dev: int, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the mounted filesystem with device number ``dev`` (an ``st_dev``), from
    ``mountinfo``; None when no mount has it or it cannot be read."""
    want = f"{os.major(dev)}:{os.minor(dev)}".encode()
    try:
        with open(mountinfo, "rb") as fh:
            text = fh.read(4 << 20)
    except OSError:
        return None
    # lines end at "\n" alone: the kernel escapes it (and spaces) in mount points, not "\r"
    for line in text.split(b"\n"):
        # ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS
        fields = line.split(b" ")
        if len(fields) > 2 and fields[2] == want and b"-" in fields[6:]:
            at = fields.index(b"-", 6)
            return fields[at + 1].decode("ascii", "replace") if at + 1 < len(fields) else None
    return None


@functools.cache
def _syncfs_call() -> Callable[[int], int] | None:
    # ctypes only here: the standard library has no syncfs, and this is the one caller
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


def write_fully(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (os.write may write less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_temp(target: Path, data: bytes, *, mode: int = 0o644, sync: bool = True,
               name: str | None = None, dir_fd: int | None = None) -> Path:
    """Write ``data`` to a new temp file beside ``target`` (to be renamed onto it).

    ``sync=False`` leaves durability to the caller (e.g. one syncfs for many files).
    ``name``: the temp file's name, chosen by a caller that must find it again without
    being told (it is created exclusively, never through a link); default: a random one.
    ``dir_fd``: ``target``'s directory, opened by the caller (see open_checked_dir): the
    temp is made in it, not wherever its path leads now. The path returned names it.
    """
    target = Path(target)
    if name is None and dir_fd is None:
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{temp_stem(target.name)}.",
                                   suffix=".tmp")
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            made = name or f".{temp_stem(target.name)}.{os.urandom(6).hex()}.tmp"
            tmp = str(target.parent / made)
            try:
                fd = os.open(made if dir_fd is not None else tmp, flags, 0o600,
                             dir_fd=dir_fd)
                break
            except FileExistsError:
                if name is not None:
                    raise
    try:
        # plain os.write: a file object costs an fstat, an isatty ioctl and an lseek per
        # file, which signing many small files pays hundreds of times
        try:
            os.fchmod(fd, mode)
            write_fully(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.basename(tmp) if dir_fd is not None else tmp, dir_fd=dir_fd)
        raise
    return Path(tmp)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    tmp = write_temp(path, data, mode=mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a secret: 0600 from creation, O_EXCL, atomically renamed into place.

    With ``overwrite=False`` an existing file (or any link, even a dangling one) is an
    error, never replaced.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OperationalError(
            f"{path} already exists; refusing to overwrite a key file",
            hint="move the existing file away if you really mean to replace it",
        )
    tmp = path.parent / f".{temp_stem(path.name)}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a killed run that had our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared meanwhile: no silent replacement.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OperationalError(
                    f"{path} already exists; refusing to overwrite a key file",
                    hint="move the existing file (or link) away if you really mean to "
                    "replace it",
                ) from None
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_private_file(path: Path, what: str, *, limit: int = 1 << 20) -> bytes:
    """Read a key file: a regular file (never through a link), ours, 0600 or tighter."""
    path = Path(path)
    check_private_file(path, what)
    return read_capped(path, limit, what, nofollow=True)


def prepare_private_dir(path: Path, what: str) -> Path:
    """A 0700 directory of ours (created, or an existing one checked) whose parents no
    other user can change: they could move it away mid-run and put theirs in its place
    (``sudo`` keeping HOME puts root's caches in a user's ~/.cache). The parents are
    checked again once they all exist: one another user created meanwhile
    (ensure_private_dir keeps an existing parent) could hold it."""
    check_parents(path, what)
    ensure_private_dir(path)  # safe against concurrent runs creating it too
    check_parents(path, what)
    return path


def ensure_private_dir(path: Path, *, created: list[Path] | None = None) -> None:
    """Create ``path`` as 0700, or check that an existing one is ours and closed to others.
    ``created``: as for :func:`make_dirs`."""
    path = Path(path)
    make_dirs(path.parent, created=created)
    try:
        # mkdir's mode can only be narrowed by the umask, so a directory another process is
        # creating at this moment is never looser than 0700: checking it below is safe.
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OperationalError(f"cannot create directory {path}: {exc.strerror}",
                               hint="check the path and the permissions of its parent"
                               ) from None
    else:
        os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have narrowed it further
        if created is not None:
            created.append(path)
        return
    check_not_link(path, "private directory")
    check_owned_dir(path, "private directory", private=True)


def _shared_mode(st: os.stat_result, path: Path, what: str) -> ConfigError | None:
    """The refusal of a secret's file that group or others may read or write, or that
    another user owns (root reads it whatever its mode: its owner knows the secret and
    can change it, say to a passphrase of theirs for a key about to be made)."""
    if st.st_mode & 0o077:
        return ConfigError(f"{what} {path} is readable or writable by other users "
                           f"(mode {stat.S_IMODE(st.st_mode):04o})", hint=f"chmod 600 {path}")
    if st.st_uid != os.geteuid():
        return ConfigError(
            f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})",
            hint=f"chown {os.geteuid()} {path}  (after checking where it came from)")
    return None


def check_private_file(path: Path, what: str = "key file") -> None:
    """Refuse a key file that is a link, not ours, or open to group or others."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"{what} {path} is a symbolic link, where a link is never expected",
            hint=f"replace the link with the key file itself, or remove it: rm {path}",
        )
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if (shared := _shared_mode(st, path, what)) is not None:
        raise shared


@contextlib.contextmanager
def locked(lock_path: Path, *, timeout: float = 60.0,
           make_parent: Callable[[Path], object] | None = None) -> Iterator[None]:
    """An exclusive advisory lock (fcntl.flock) held for the duration of the block.

    Its holder may remove the lock file (a failed `ca init` undoing what it made): a
    waiter that then gets the lock of the removed file opens the path again, so two runs
    never hold locks of two different files as if each were alone. That holder may have
    removed the lock's directory too (one it had created): ``make_parent``, for a caller
    that creates the directory anyway (init), is called with it to make it again;
    without it, a missing directory is an error."""
    deadline = time.monotonic() + timeout
    while True:
        fd = _open_lock(lock_path, make_parent)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OperationalError(
                            f"{lock_path} is held by another trustboot process",
                            hint="wait for the other run to finish, then retry",
                        ) from None
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        if _still_named(fd, lock_path):
            break
        os.close(fd)  # removed or replaced while we waited: lock what the path names now
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_lock_file(path: Path, st: os.stat_result) -> None:
    """Refuse a lock file (stat ``st``) that another user owns or may open: flock needs
    only read access, so whoever can open it can hold it and stall every run (which
    would then time out blaming "another trustboot process")."""
    if (shared := _shared_mode(st, path, "lock file")) is not None:
        raise shared


def _open_lock(lock_path: Path, make_parent: Callable[[Path], object] | None = None) -> int:
    fd = _open_lock_path(lock_path, make_parent)
    try:
        check_lock_file(lock_path, os.fstat(fd))  # the file opened, not what the path names
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_lock_path(lock_path: Path,
                    make_parent: Callable[[Path], object] | None = None) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(lock_path, flags, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            if make_parent is None:
                raise
            make_parent(lock_path.parent)  # removed by the holder before us (see locked)
            return os.open(lock_path, flags, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"lock file {lock_path} is a symbolic link",
                              hint=f"remove it (and check who created it): rm {lock_path}",
                              ) from None
        raise OperationalError(f"cannot open lock file {lock_path}: {exc.strerror}",
                               hint="check the directory's permissions") from None


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
