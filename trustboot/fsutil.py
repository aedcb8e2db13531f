"""Atomic writes and private files.

Every write that matters goes through a temp file in the same directory, fsync, then
os.replace, so a process killed at any moment leaves either the old or the new file.
Private files are created with O_EXCL and mode 0600 from the start (never chmod'ed after
the secret is already on disk) inside 0700 directories.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from trustboot.errors import ConfigError, OperationalError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def read_capped(path: Path, limit: int, what: str, *, nofollow: bool = False) -> bytes:
    """Read a regular file of at most ``limit`` bytes; ConfigError naming ``what`` otherwise.

    The file is opened non-blocking (a FIFO cannot hang us) and checked with fstat before
    anything is read, so /dev/zero, FIFOs and directories are refused unread. With
    ``nofollow`` a symbolic link in the last component is refused too.
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
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


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(target: Path, data: bytes, *, mode: int = 0o644, sync: bool = True) -> Path:
    """Write ``data`` to a new temp file beside ``target`` (to be renamed onto it).

    ``sync=False`` leaves durability to the caller (e.g. one syncfs for many files).
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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

    With ``overwrite=False`` an existing file is an error, never replaced.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    if path.exists() and not overwrite:
        raise OperationalError(
            f"{path} already exists; refusing to overwrite a key file",
            hint="move the existing file away if you really mean to replace it",
        )
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared meanwhile: no silent replacement.
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` as 0700, or check that an existing one is not open to others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # mkdir's mode can only be narrowed by the umask, so a directory another process is
        # creating at this moment is never looser than 0700: checking it below is safe.
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    else:
        os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have narrowed it further
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"directory {path} is accessible to other users (mode {mode:04o})",
            hint=f"chmod 700 {path}",
        )


def check_private_file(path: Path) -> None:
    """Refuse a key file that group or others can read or write, naming the fix."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"key file {path} is readable or writable by other users (mode {mode:04o})",
            hint=f"chmod 600 {path}",
        )


@contextlib.contextmanager
def locked(lock_path: Path, *, timeout: float = 60.0) -> Iterator[None]:
    """An exclusive advisory lock (fcntl.flock) held for the duration of the block."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
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
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
