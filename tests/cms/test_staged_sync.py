"""Durability of many signature files: one syncfs() when the page cache is quiet, a fsync
per file otherwise, and never a rename before the data is on stable storage."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from trustboot import fsutil
from trustboot.cms import sign
from trustboot.cms.sign import SYNCFS_MIN_FILES, StagedWrites
from trustboot.errors import OperationalError


class Syncs:
    """What was synced, in order: ("file", name) for a fsync of a regular file,
    ("dir", path) for a directory's, ("syncfs", path) for a syncfs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, quiet: bool,
                 syncfs: Callable[[Path], bool] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.renamed_before_sync: list[str] = []
        real_fsync, real_syncfs = os.fsync, fsutil.syncfs
        self.targets: list[Path] = []
        self.types: dict[int, str] = {}  # st_dev -> filesystem type; default ext4

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.calls.append(("dir" if os.path.isdir(path) else "file",
                               os.path.basename(path)))
            real_fsync(fd)

        def recorded_syncfs(path: Path) -> bool:
            self.calls.append(("syncfs", str(path)))
            # the data must be durable before any target is replaced
            self.renamed_before_sync += [t.name for t in self.targets if t.exists()]
            return (syncfs or real_syncfs)(path)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(sign, "syncfs", recorded_syncfs)
        monkeypatch.setattr(sign, "quiet_writeback", lambda: quiet)
        monkeypatch.setattr(sign, "filesystem_type", lambda dev: self.types.get(dev, "ext4"))

    def kinds(self, kind: str) -> list[str]:
        return [what for k, what in self.calls if k == kind]


def _write(tmp_path: Path, syncs: Syncs, n: int, *, adopted: int = 0,
           named: int = 0) -> list[Path]:
    """``n`` targets in ``tmp_path`` through add(), ``named`` through add_named(), then
    ``adopted`` more (see _commit)."""
    return _commit(syncs, [tmp_path / f"f{i}.sig" for i in range(n + named + adopted)],
                   adopted=adopted, named=named)


def _commit(syncs: Syncs, targets: list[Path], *, adopted: int = 0,
            named: int = 0) -> list[Path]:
    """``targets`` written with b"sig INDEX": the last ``adopted`` as a forked signer
    writes them (temp files of its own, unsynced) and adopted, the ``named`` before them
    through add_named() in batches of 7, the others through add()."""
    syncs.targets = targets
    n = len(targets) - adopted - named
    with StagedWrites(files=len(targets)) as staged:
        for i, target in enumerate(targets[:n]):
            staged.add(target, b"sig %d" % i)
        batch = [(target, b"sig %d" % i, target.with_name(f".{target.name}.n.tmp"))
                 for i, target in enumerate(targets[n:n + named], start=n)]
        for start in range(0, len(batch), 7):
            staged.add_named(batch[start:start + 7])
        n += named
        for i, target in enumerate(targets[n:], start=n):
            temp = fsutil.write_temp(target, b"sig %d" % i, name=f".{target.name}.w.tmp",
                                     sync=False)
            staged.adopt(target, temp)
        staged.commit()
    return targets


def _check_written(tmp_path: Path, targets: list[Path]) -> None:
    assert [t.read_bytes() for t in targets] == [b"sig %d" % i for i in range(len(targets))]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)


def test_quiet_page_cache_one_syncfs_and_no_fsync_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = Syncs(monkeypatch, quiet=True)
    targets = _write(tmp_path, syncs, 20, adopted=40, named=30)  # > ADOPT_BATCH: batches
    _check_written(tmp_path, targets)
    assert syncs.kinds("syncfs") == [str(tmp_path)]
    assert syncs.kinds("file") == []
    assert syncs.kinds("dir") == [tmp_path.name]  # the renames made durable, once
    assert syncs.renamed_before_sync == []
    # the syncfs came before the directory's fsync, i.e. before the renames it seals
    assert [k for k, _ in syncs.calls] == ["syncfs", "dir"]


def test_writers_are_threads_only_where_they_wait_for_the_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one syncfs at commit nothing before it waits for the disk: the caller's thread
    writes and renames (threads measured ~5 % more CPU for 500 files on 2 cores). With a
    fsync per file the writes go to the writer threads, whose fsyncs overlap."""
    import threading

    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    _check_written(tmp_path / "q", _write(_mkdir(tmp_path / "q"), Syncs(monkeypatch, quiet=True),
                                          20, adopted=40, named=30))
    assert started == []
    _check_written(tmp_path / "b", _write(_mkdir(tmp_path / "b"),
                                          Syncs(monkeypatch, quiet=False), 20, named=30))
    assert started and all(name.startswith("trustboot-write") for name in started)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_busy_page_cache_or_few_files_fsync_each_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busy = Syncs(monkeypatch, quiet=False)
    (tmp_path / "busy").mkdir()
    targets = _write(tmp_path / "busy", busy, 20, adopted=40, named=30)
    _check_written(tmp_path / "busy", targets)
    assert busy.kinds("syncfs") == [] and len(busy.kinds("file")) == 90

    few = Syncs(monkeypatch, quiet=True)
    (tmp_path / "few").mkdir()
    n = SYNCFS_MIN_FILES - 1
    targets = _write(tmp_path / "few", few, n)
    _check_written(tmp_path / "few", targets)
    assert few.kinds("syncfs") == [] and len(few.kinds("file")) == n


def test_without_syncfs_every_temp_is_fsynced_before_the_renames(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = Syncs(monkeypatch, quiet=True, syncfs=lambda _path: False)  # not Linux
    targets = _write(tmp_path, syncs, 20, adopted=40, named=30)
    _check_written(tmp_path, targets)
    files = syncs.kinds("file")
    assert len(files) == 90 and all(name.endswith(".tmp") for name in files)
    assert [k for k, _ in syncs.calls][-1] == "dir"  # after every file's fsync


def test_a_failed_syncfs_replaces_nothing(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(path: Path) -> bool:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    old = tmp_path / "f0.sig"
    old.write_bytes(b"old")
    syncs = Syncs(monkeypatch, quiet=True, syncfs=eio)
    with pytest.raises(OperationalError) as err:
        _write(tmp_path, syncs, 20)
    assert str(tmp_path) in err.value.message and "Input/output error" in err.value.message
    assert "nothing was replaced" in (err.value.hint or "")
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.sig"]  # no temp left


def test_syncfs_only_where_it_is_as_strong_as_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets on two filesystems: the one whose syncfs may do less than a fsync (FUSE
    here) gets a fsync per file, the other one syncfs."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or \
            shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on a filesystem of its own")
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        syncs = Syncs(monkeypatch, quiet=True)
        syncs.types[other.stat().st_dev] = "fuse"
        targets = _commit(syncs, [tmp_path / f"f{i}.sig" for i in range(10)]
                          + [other / f"f{i}.sig" for i in range(10, 30)])
        assert [t.read_bytes() for t in targets] == [b"sig %d" % i for i in range(30)]
        assert syncs.kinds("syncfs") == [str(tmp_path)]
        files = syncs.kinds("file")
        # (temp names are .TARGET.RANDOM.tmp)
        assert sorted(name.split(".")[1] for name in files) == sorted(
            f"f{i}" for i in range(10, 30))
        assert sorted(syncs.kinds("dir")) == sorted([tmp_path.name, other.name])
        assert syncs.renamed_before_sync == []

        syncs.types[tmp_path.stat().st_dev] = "fuse"  # both: no syncfs at all
        syncs.calls.clear()
        _commit(syncs, targets)
        assert syncs.kinds("syncfs") == [] and len(syncs.kinds("file")) == 30
    finally:
        shutil.rmtree(other)


def test_filesystem_type_from_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        "30 22 0:26 / /dev/shm rw,nosuid shared:4 master:2 - tmpfs tmpfs rw\n"
        "31 22 0:27 / /mnt/x rw - fuse.sshfs host:/x rw\n"
        "32 22 0:28 / /mnt/broken rw\n"
        "33 22 0:29 / /mnt/a\rb rw - fuse.x src rw\n")  # a raw CR in a mount point
    assert fsutil.filesystem_type(os.makedev(259, 1), mountinfo) == "ext4"
    assert fsutil.filesystem_type(os.makedev(0, 26), mountinfo) == "tmpfs"
    assert fsutil.filesystem_type(os.makedev(0, 27), mountinfo) == "fuse.sshfs"
    assert fsutil.filesystem_type(os.makedev(0, 28), mountinfo) is None  # no separator
    assert fsutil.filesystem_type(os.makedev(0, 29), mountinfo) == "fuse.x"
    assert fsutil.filesystem_type(os.makedev(8, 1), mountinfo) is None
    assert fsutil.filesystem_type(os.makedev(259, 1), tmp_path / "absent") is None
    if Path("/proc/self/mountinfo").exists():  # this machine's own, as the code reads it
        assert fsutil.filesystem_type(tmp_path.stat().st_dev) is not None


def test_quiet_writeback_reads_dirty_and_writeback(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"

    def quiet(text: str, limit: int = 16 << 20) -> bool:
        meminfo.write_text(text)
        return fsutil.quiet_writeback(limit, meminfo)

    base = "MemTotal:       24000000 kB\nDirty:              {d} kB\nWriteback:          {w} kB\n"
    assert quiet(base.format(d=1000, w=24))
    assert not quiet(base.format(d=1000, w=24), limit=1000 * 1024)  # 1024 kB > 1000 kB
    assert not quiet(base.format(d=20000, w=0))
    assert not quiet(base.format(d=0, w=20000))
    assert not quiet("Dirty:  1000 kB\n")  # Writeback unknown
    assert not quiet(base.format(d="x1", w=0))
    assert not quiet(base.format(d=1, w=0).replace("kB", "MB"))
    assert not fsutil.quiet_writeback(meminfo=tmp_path / "absent")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux")
def test_syncfs_calls_the_kernel_and_reports_its_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fsutil.syncfs(tmp_path) is True
    with pytest.raises(NotADirectoryError):
        fsutil.syncfs(Path(__file__))

    code = [errno.EIO]

    def failing(_fd: int) -> int:
        ctypes.set_errno(code[0])
        return -1

    monkeypatch.setattr(fsutil, "_syncfs_call", lambda: failing)
    with pytest.raises(OSError) as err:
        fsutil.syncfs(tmp_path)
    assert err.value.errno == errno.EIO and err.value.filename == str(tmp_path)
    for refused in (errno.ENOSYS, errno.EPERM):  # a seccomp sandbox: fsync each file instead
        code[0] = refused
        assert fsutil.syncfs(tmp_path) is False
    monkeypatch.setattr(fsutil, "_syncfs_call", lambda: None)
    assert fsutil.syncfs(tmp_path) is False


def test_a_temp_gone_before_its_late_fsync_replaces_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fsync at commit (no syncfs here) that fails for one target stops the commit
    before any rename, naming that target."""
    old = tmp_path / "f3.sig"
    old.write_bytes(b"old")
    syncs = Syncs(monkeypatch, quiet=True, syncfs=lambda _path: False)
    targets = [tmp_path / f"f{i}.sig" for i in range(20)]
    syncs.targets = targets
    with pytest.raises(OperationalError) as err, StagedWrites(files=20) as staged:
        for i, target in enumerate(targets):
            temp = fsutil.write_temp(target, b"sig %d" % i, name=f".{target.name}.w.tmp",
                                     sync=False)
            staged.adopt(target, temp)
        os.unlink(tmp_path / ".f3.sig.w.tmp")  # someone removed it meanwhile
        staged.commit()
    assert "f3.sig" in err.value.message and "nothing was replaced" in (err.value.hint or "")
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f3.sig"]  # no temp left


def test_a_named_temp_taken_by_someone_else_gives_way_to_a_random_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """add_named creates each temp exclusively, never through a link: in a shared
    directory another user who sees the run's temp names can take one first (here with a
    link). That file is written under a random name instead, and what they planted is
    left alone (not ours)."""
    syncs = Syncs(monkeypatch, quiet=True)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    planted = tmp_path / ".f25.sig.n.tmp"
    planted.symlink_to(elsewhere)
    targets = _write(tmp_path, syncs, 20, named=30)
    assert [t.read_bytes() for t in targets] == [b"sig %d" % i for i in range(50)]
    assert not elsewhere.exists() and planted.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [t.name for t in targets] + [planted.name])


def test_a_named_write_that_fails_replaces_nothing(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A write add_named cannot make (here: the target's directory is gone) fails the
    commit, naming that target; no target is replaced and no temp is left."""
    syncs = Syncs(monkeypatch, quiet=True)
    old = tmp_path / "f3.sig"
    old.write_bytes(b"old")
    targets = [tmp_path / f"f{i}.sig" for i in range(40)]
    targets[25] = tmp_path / "gone" / "f25.sig"
    with pytest.raises(OperationalError) as err:
        _commit(syncs, targets, named=30)
    assert "gone/f25.sig" in err.value.message
    assert "No such file or directory" in err.value.message
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f3.sig"]  # no temp left
