"""Finding an iPXE source tree, identifying it, and copying it somewhere private.

The user's tree is never modified: every build happens in a copy of its ``src/`` directory
(see :func:`copy_tree`). The identity of a tree is a hash over its files, so a dirty git
checkout and a tarball with the same content get the same cache key.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from trustboot.errors import ConfigError, OperationalError
from trustboot.fsutil import (
    PRIVATE_DIR_MODE,
    holding_dir,
    make_dirs,
    remove_unlocked_dirs,
    write_fully,
)
from trustboot.subproc import TIME_LIMIT_ENV, TimedOut, git_env, run_bounded, time_limit

ENV_SOURCE = "TRUSTBOOT_IPXE_SRC"

# Files that must exist in ``src/`` for a tree to be an iPXE tree.
_MARKERS = ("Makefile", "Makefile.housekeeping", "config/general.h", "include/ipxe/image.h")

# A real iPXE src/ is about 30 MB, its largest file well under 1 MiB: the caps refuse a
# tree that would fill the cache (each build copies it) long before a real one nears them.
MAX_TREE_FILE = 64 << 20
MAX_TREE = 512 << 20
# A file this large with under an eighth of it on disk is mostly holes (a `truncate -s 1T`
# costs nothing to make and a terabyte to copy). Not any file with fewer blocks than
# bytes: small files may live inline in the inode (0 blocks), and compressing filesystems
# (btrfs, ZFS) report the compressed size, a half or a third of source text.
_SPARSE_FROM = 1 << 20

# Build outputs and user-local configuration are not part of the tree's identity: we write
# config/local ourselves and never copy a previous build.
_SKIP_TOP = ("bin", "config/local")


@dataclass(frozen=True)
class IpxeSource:
    """An iPXE tree: ``src`` is its ``src/`` directory."""

    src: Path
    tree_sha256: str
    git_commit: str | None = None
    git_dirty: bool | None = None
    git_commit_time: int | None = None  # committer time: the default SOURCE_DATE_EPOCH
    # The tree's own non-empty config/local headers: never used (trustboot writes its own).
    ignored_local_config: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "tree_sha256": self.tree_sha256,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
        }


def resolve_source_dir(option: Path | None, env: dict[str, str] | None = None) -> Path:
    """``--source`` if given, else ``$TRUSTBOOT_IPXE_SRC``; an error naming both otherwise."""
    env = dict(os.environ) if env is None else env
    if option is not None:
        return option
    value = env.get(ENV_SOURCE)
    if value:
        return Path(value)
    raise ConfigError(
        "no iPXE source tree given",
        hint=f"pass --source DIR (an iPXE checkout) or set {ENV_SOURCE}; "
        "or --git URL --commit SHA to clone one",
    )


def find_src_dir(path: Path) -> Path:
    """Accept the top of an iPXE checkout or its ``src/``; return the ``src/`` directory."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"iPXE source {path} does not exist",
            hint="pass the directory of an iPXE checkout (git clone https://github.com/ipxe/ipxe)",
        )
    if not path.is_dir():
        raise ConfigError(f"iPXE source {path} is not a directory")
    for candidate in (path / "src", path):
        if all((candidate / marker).is_file() for marker in _MARKERS):
            return candidate
    missing = [m for m in _MARKERS if not (path / "src" / m).is_file()]
    raise ConfigError(
        f"{path} is not an iPXE source tree (no src/{missing[0]})",
        hint="pass the top directory of an iPXE checkout, the one that contains src/Makefile",
    )


def _iter_files(src: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(src):
        rel_root = Path(root).relative_to(src)
        # Prune build outputs (bin, bin-x86_64-efi, ...) and config/local.
        dirs[:] = sorted(
            d for d in dirs
            if not (rel_root == Path(".") and d.startswith("bin"))
            and (rel_root / d).as_posix() not in _SKIP_TOP
        )
        # a link to a directory is not walked (nor copied): listed, so tree_hash judges it
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if d not in links]
        files.extend(Path(root, n) for n in sorted(names + links))
    return files


def _check_regular(file: Path) -> None:
    """A FIFO or device in a tree would block or never end the hash and the copy."""
    if not stat.S_ISREG(os.lstat(file).st_mode):
        raise ConfigError(
            f"{file} in the iPXE tree is not a regular file (a FIFO, device or socket)",
            hint="remove it, or build from a clean checkout",
        )


def _check_link(file: Path, root: str) -> None:
    """A link's text is what the hash records: the file it leads to must be one the hash
    covers too, in the tree. One that leads out of it (or nowhere) would let a build read
    content the cache key does not cover (a stale firmware counted as a hit), and in the
    build's copy of the tree it would lead somewhere else again."""
    target = os.path.realpath(file)
    if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
        raise ConfigError(
            f"{file} in the iPXE tree is a symbolic link to {os.readlink(file)!r}, which "
            "is not a file in the tree",
            hint="replace the link with the file it names, or build from a clean checkout",
        )


def _check_size(file: Path, st: os.stat_result) -> None:
    """A file the tree may hold: not over MAX_TREE_FILE, not mostly holes."""
    hint = ("remove it: an iPXE tree holds source files, none larger than a few hundred "
            "KiB")
    if st.st_size > MAX_TREE_FILE:
        raise ConfigError(f"{file} in the iPXE tree is {st.st_size} bytes, more than the "
                          f"{MAX_TREE_FILE >> 20} MiB a tree's file may have", hint=hint)
    if st.st_size >= _SPARSE_FROM and st.st_blocks * 512 * 8 < st.st_size:
        raise ConfigError(f"{file} in the iPXE tree is a sparse file ({st.st_size} bytes, "
                          f"{st.st_blocks * 512} of them on disk): copied, it would take "
                          "all of its size", hint=hint)


def _check_sizes(files: list[Path]) -> None:
    """Every file's size checked, and their sum, before any is read (or copied)."""
    total = 0
    for file in files:
        st = os.lstat(file)
        if not stat.S_ISREG(st.st_mode):
            continue  # (links and others are judged as they are reached)
        _check_size(file, st)
        total += st.st_size
        if total > MAX_TREE:
            raise ConfigError(
                f"the iPXE tree's files add up to more than {MAX_TREE >> 20} MiB (reached "
                f"at {file}); a real iPXE src/ is about 30 MB",
                hint="build from a clean iPXE checkout, without large files added to src/")


def tree_hash(src: Path) -> str:
    """SHA-256 over (relative path, mode bit x, content) of every file, in sorted order."""
    return _walk(src, None)


def _walk(src: Path, copy_to: Path | None) -> str:
    """:func:`tree_hash` of ``src``; with ``copy_to``, every file is copied there as it is
    hashed, its bytes read once, so the digest is that of the copy."""
    outer = hashlib.sha256()
    root = os.path.realpath(src)
    made: set[Path] = set()
    files = _iter_files(src)
    _check_sizes(files)
    for file in files:
        rel = file.relative_to(src)
        out = None
        if copy_to is not None:
            out = copy_to / rel
            if out.parent not in made:
                # 0700 whatever the umask: the work tree may get a client key
                make_dirs(out.parent, PRIVATE_DIR_MODE)
                made.add(out.parent)
        if file.is_symlink():
            _check_link(file, root)
            text = os.readlink(file)
            entry = b"L" + os.fsencode(text)
            if out is not None:
                os.symlink(text, out)
        else:
            entry = _file_entry(file, out)
        # the name's bytes: a name that is not UTF-8 has surrogates in its str
        outer.update(os.fsencode(rel.as_posix()) + b"\0" + entry + b"\n")
    return outer.hexdigest()


def _file_entry(file: Path, copy_to: Path | None) -> bytes:
    """A regular file's part of the tree hash (x bit, SHA-256 of its content), copying the
    content read to ``copy_to`` (mode and mtime kept: make compares mtimes)."""
    try:
        # never through a link, never blocking: a file replaced since it was listed
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise _changed(file) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _check_regular(file)  # (its error, naming what the file is)
            raise _changed(file)
        _check_size(file, st)  # this file's, should it have been replaced since listed
        inner = hashlib.sha256()
        out = None if copy_to is None else os.open(
            copy_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600)
        try:
            read = 0
            for block in iter(lambda: fh.read(1 << 20), b""):
                read += len(block)
                if read > st.st_size:  # growing as it is read: beyond what was checked
                    raise _changed(file)
                inner.update(block)
                if out is not None:
                    write_fully(out, block)
            if out is not None:
                # the permission bits, never set-id bits; then the source's times
                os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            if out is not None:
                os.close(out)
    executable = b"x" if os.access(file, os.X_OK) else b"-"
    return executable + inner.digest()


# the way out of a tree changed while (or since) it was read
_CHANGED_HINT = "run again once nothing writes to the tree (a git checkout, an editor)"


def _changed(file: Path) -> OperationalError:
    return OperationalError(f"{file} in the iPXE tree changed while trustboot was reading it",
                            hint=_CHANGED_HINT)


# A tree's own .git/config can name commands git runs while reading it: an fsmonitor hook
# (status), signature checking through gpg (log), content filters from .gitattributes
# (status, when a file's stat data is racy). Identifying a tree must run none of them (a
# dry run or a plan runs no Makefile either): the first two are switched off for every
# call, and a config with any filter.* or other command key gets no `git status`, which
# never descends into submodules (their configs are not checked). Hooks: `status`
# refreshes and rewrites the index, which runs .git/hooks/post-index-change; it writes
# nothing with --no-optional-locks, and no hook is found with hooksPath=/dev/null.
_GIT_OFF = ("--no-optional-locks", "-c", "core.hooksPath=/dev/null",
            "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false",
            "-c", "log.showSignature=false")
# the tree's own config: .git/config and (extensions.worktreeConfig) .git/config.worktree
_TREE_SCOPES = ("local", "worktree")
_COMMAND_KEYS = re.compile(
    r"^(filter\..*|diff\..*\.(textconv|command)|diff\.external|gpg\.(.*\.)?program|"
    r"core\.(fsmonitor|sshcommand|hookspath)|include(if)?\..*)$")


def _git(top: Path, *args: str) -> str | None:
    if not (top / ".git").exists() or shutil.which("git") is None:
        return None
    proc = subprocess.run(
        ["git", "-C", str(top), *_GIT_OFF, *args], capture_output=True, text=True,
        check=False, stdin=subprocess.DEVNULL, env=git_env(),
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _config_runs_commands(top: Path) -> bool:
    """Whether the tree's git config names a command (see _COMMAND_KEYS); unreadable: yes."""
    # NUL-separated: a subsection name may hold any character but NUL and newline, and
    # one that str.splitlines() splits at (U+2028, \x1c, ...) would cut diff.X.textconv
    # into two names neither of which matches
    listed = _git(top, "config", "--show-scope", "--name-only", "--list", "-z")
    if listed is None:
        return True
    fields = listed.split("\0")  # scope, name, scope, name, ..., ""
    return any(_COMMAND_KEYS.match(name.lower())
               for scope, name in zip(fields[0::2], fields[1::2], strict=False)
               if scope in _TREE_SCOPES)


def _head(top: Path) -> str | None:
    return _git(top, "rev-parse", "--verify", "--end-of-options", "HEAD^{commit}")


def open_source(path: Path) -> IpxeSource:
    """Detect the tree at ``path`` and identify it (tree hash, git commit when there is one)."""
    src = find_src_dir(path)
    top = src.parent
    commit = _head(top)
    dirty = None
    when = None
    if commit is not None:
        if not _config_runs_commands(top):  # else: unknown
            # --ignore-submodules: a submodule's own config (filters...) is never read
            # (the tree hash covers its files)
            status = _git(top, "status", "--porcelain", "--untracked-files=no",
                          "--ignore-submodules=all", "--", "src")
            dirty = bool(status) if status is not None else None
        stamp = _git(top, "log", "-1", "--format=%ct", "HEAD", "--")
        when = int(stamp) if stamp and stamp.isdigit() else None
    local = src / "config" / "local"
    ignored = tuple(sorted(
        # Only headers matter; iPXE's own tree keeps a .gitignore there.
        p.name for p in local.glob("*.h") if p.is_file() and p.stat().st_size > 0
    )) if local.is_dir() else ()
    return IpxeSource(
        src=src, tree_sha256=tree_hash(src), git_commit=commit, git_dirty=dirty,
        git_commit_time=when, ignored_local_config=ignored,
    )


def copy_tree(source: IpxeSource, dest: Path) -> Path:
    """Copy ``source.src`` (without build outputs or config/local) to ``dest/src``.

    Directories are made 0700 whatever the umask (the work tree is private: it may get a
    client key); files keep their source's permission bits. The copy is hashed as it is
    made and must be the tree :func:`open_source` identified: the build's cache key is
    that identity, and a tree changed since (a checkout, an edit) would have its firmware
    cached, and later served, as the firmware of the tree it was (OperationalError).
    """
    target = dest / "src"
    make_dirs(target, PRIVATE_DIR_MODE)
    if _walk(source.src, target) != source.tree_sha256:
        raise OperationalError(
            f"the iPXE tree {source.src} changed after trustboot identified it: what it "
            "would build is not the tree its cache key names", hint=_CHANGED_HINT)
    make_dirs(target / "config" / "local", PRIVATE_DIR_MODE)
    return target


_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_URL_SCHEMES = ("https", "ssh", "file")


def check_commit(commit: str) -> str:
    """A full commit id (SHA-1: 40 hex digits, SHA-256: 64), lower-cased."""
    value = commit.strip().lower()
    if not _COMMIT.fullmatch(value):
        raise ConfigError(
            f"--commit {commit!r} is not a full commit id (40 or 64 hex digits)",
            hint="pin the source to a full commit id (git rev-parse v2.0.0^{commit})",
        )
    return value


def check_git_url(url: str) -> str:
    """The repository ``--git`` names, made safe to hand to git.

    Accepted: ``https://``, ``ssh://`` and ``file://`` URLs, and an existing local
    directory (returned as an absolute path). Everything else is refused: a value starting
    with ``-`` (git would read it as an option: ``--upload-pack=CMD`` runs CMD), control
    characters and whitespace, ``ext::`` and other transport helpers, scp-like
    ``host:path`` (give ``ssh://host/path``), plain http and git://.
    """
    hint = ("pass https://HOST/PATH, ssh://[USER@]HOST/PATH, file:///PATH or a local "
            "directory, e.g. --git https://github.com/ipxe/ipxe.git")
    if not url or url.startswith("-") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ConfigError(f"--git {url!r} is not a repository URL "
                          "(it is empty, starts with '-' or holds spaces or control "
                          "characters)", hint=hint)
    scheme, sep, _rest = url.partition("://")
    if sep:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:  # a broken IPv6 literal or port: from a recipe too
            raise ConfigError(f"--git {url!r} is not a valid URL: {exc}", hint=hint) from None
        if scheme.lower() not in _URL_SCHEMES:
            raise ConfigError(f"--git {url!r}: the {scheme!r} transport is not allowed",
                              hint=hint)
        if scheme.lower() != "file" and not parts.hostname:
            raise ConfigError(f"--git {url!r} has no host", hint=hint)
        if scheme.lower() == "file" and (parts.netloc or not parts.path):
            raise ConfigError(f"--git {url!r} is not a file:///PATH URL", hint=hint)
        return url
    if "::" in url or (":" in url.split("/", 1)[0]):
        raise ConfigError(
            f"--git {url!r} is a transport helper or scp-like address, which is not allowed",
            hint=hint,
        )
    path = Path(url)
    if not path.is_dir():
        raise ConfigError(f"--git {url!r} is neither an allowed URL nor a local directory",
                          hint=hint)
    return str(path.resolve())


def clone_dir(cache: Path, commit: str) -> Path:
    """Where the clone of ``commit`` lives in the iPXE cache ``cache``: one place for
    `ipxe build --git` and a recipe's ipxe.git, so either reuses the other's clone."""
    return cache / "git" / check_commit(commit)


def _pinned(url: str, commit: str, dest: Path) -> tuple[str, str, bool]:
    """The checked URL and commit, and whether ``dest`` already holds that clone."""
    commit = check_commit(commit)
    url = check_git_url(url)
    have = (shutil.which("git") is not None and (dest / ".git").is_dir()
            and _head(dest) == commit)
    return url, commit, have


def cloned_at(url: str, commit: str, dest: Path) -> Path | None:
    """``dest`` if it already holds the clone ``clone_pinned`` would make; else None.
    Reads only (for dry runs)."""
    return dest if _pinned(url, commit, dest)[2] else None


def clone_pinned(url: str, commit: str, dest: Path) -> Path:
    """Clone ``url`` at exactly ``commit`` into ``dest`` (reused if already there).

    The clone is made beside ``dest`` under a dot-name held by this run (as a build's
    fresh work tree is) and renamed to ``dest`` only once checked out at ``commit``: a run
    killed mid-checkout (a cancelled CI job) left ``dest`` with part of the tree, no
    HEAD and git's index.lock, which every later build failed to clone over. Such a
    ``dest`` (an older version's) is removed; a killed run's dot-named clone is swept by
    the next clone once it is a minute old and no run holds it."""
    url, commit, have = _pinned(url, commit, dest)
    prefix = f".{dest.name}."
    remove_unlocked_dirs(dest.parent, lambda n: n.startswith(prefix), older_than=60)
    if have:
        return dest
    if shutil.which("git") is None:
        raise ConfigError("git is needed to clone an iPXE tree", hint="apt-get install git")
    make_dirs(dest.parent, PRIVATE_DIR_MODE)
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))  # 0700
    with holding_dir(work):
        try:
            _clone_into(url, commit, work)
            if (dest.exists() or dest.is_symlink()) and cloned_at(url, commit, dest) is None:
                shutil.rmtree(dest, ignore_errors=True)  # never follows a link
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dest)  # (a link, which rmtree leaves)
            try:
                os.rename(work, dest)
            except OSError:
                # a concurrent run's clone was renamed into place first: it is the same
                if cloned_at(url, commit, dest) is None:
                    raise OperationalError(
                        f"cannot put the clone of {commit} in place at {dest}",
                        hint=f"remove {dest} and run again") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _clone_into(url: str, commit: str, dest: Path) -> None:
    """Fetch ``commit`` from ``url`` into the new empty directory ``dest``, checked out."""
    steps = (
        # --template=: no hook samples or other files from the system's template dir.
        ["git", "init", "-q", "--template=", "--", str(dest)],
        ["git", "-C", str(dest), "fetch", "-q", "--no-tags", "--depth", "1", "--", url,
         commit],
        ["git", "-C", str(dest), "-c", "advice.detachedHead=false", "checkout", "-q",
         "--detach", commit, "--"],
    )
    limit = time_limit()
    for argv in steps:
        try:
            proc = run_bounded(argv, limit=limit, env=git_env())
        except TimedOut:
            raise OperationalError(
                f"could not fetch {commit} from {url}: git did not finish within "
                f"{limit:g} s", hint=f"check that the server answers; on a slow link "
                f"raise {TIME_LIMIT_ENV} (seconds)") from None
        if proc.returncode != 0:
            raise OperationalError(
                f"could not fetch {commit} from {url}: {proc.stderr.strip()[-500:]}",
                hint="check the URL and that the commit exists there, or use --source DIR",
            )
    head = _head(dest)
    if head != commit:
        raise OperationalError(f"clone of {url} is at {head}, not the pinned {commit}")
