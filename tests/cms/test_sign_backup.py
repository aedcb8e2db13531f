"""Every FILE.sig or none: before each rename the old FILE.sig is kept under a backup name,
so a failed commit puts back those already replaced. The backup is a hard link where one
can be made, a copy where not (another user's file under fs.protected_hardlinks, a
filesystem without hard links), and a failed commit names what it could not put back."""

from __future__ import annotations

import datetime as dt
import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cms.pki import PASSPHRASE, Material, make_material, rsa_key
from tests.conftest import call_as_nobody, dir_of_nobody
from trustboot import secrets
from trustboot.cms.sign import sign_files, write_all
from trustboot.errors import OperationalError
from trustboot.keys.ref import parse_ref
from trustboot.keys.signer import KeySigner, open_signer

NOBODY = 65534


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))


def _signer(material: Material, name: str) -> KeySigner:
    key, cert, chain = material.issue(name, rsa_key())
    signer, _ = open_signer(parse_ref(f"file:{key}"), passphrases=secrets.constant(PASSPHRASE),
                            cert=cert, chain=chain)
    assert isinstance(signer, KeySigner)
    return signer


def test_another_users_old_sig_is_replaced_in_ones_own_directory(
        material: Material, shared: Path) -> None:
    """The reviewer's case: a root-owned 0644 a.bin.sig (an earlier `sudo trustboot
    sign`) in a user's own directory. The rename over it is allowed, but
    fs.protected_hardlinks refuses the backup link (EPERM), which failed the whole run:
    the backup is a copy instead, and both signatures are written."""
    try:
        protected = Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1"
    except OSError:
        protected = False
    if not protected:
        pytest.skip("needs fs.protected_hardlinks=1 (the usual default)")
    home = dir_of_nobody(shared / "user")  # skips unless root
    files = []
    for name in ("a.bin", "b.bin"):
        (home / name).write_bytes(b"image " + name.encode())
        os.chown(home / name, NOBODY, NOBODY)
        files.append(home / name)
    (home / "a.bin.sig").write_bytes(b"old root signature")  # root's, 0644
    os.chmod(home / "a.bin.sig", 0o644)
    signer = _signer(material, "foreign-sig")
    said = call_as_nobody(lambda: sign_files(files, signer, now=dt.datetime.now(dt.UTC)))
    assert said == "ok", said
    assert (home / "a.bin.sig").read_bytes()[:1] == b"\x30"  # DER: the new signature
    assert (home / "a.bin.sig").stat().st_uid == NOBODY
    assert (home / "b.bin.sig").is_file()
    assert sorted(p.name for p in home.iterdir()) == ["a.bin", "a.bin.sig", "b.bin",
                                                      "b.bin.sig"]


def _no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """link() as on a filesystem without hard links (vfat: EPERM; here EXDEV)."""
    def link(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", link)


def _fail_rename_onto(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """os.replace onto ``name`` fails, as on a target changed since the check."""
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        if Path(dst).name == name:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", replace)


def test_without_hard_links_a_resign_succeeds_and_a_failure_restores_copies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where link() cannot make a backup, every re-sign failed. Now it succeeds (no
    backup left behind), and a rename failing later still puts back the earlier .sig
    files from their copies, with their modes."""
    for name in ("a.sig", "b.sig", "c.sig"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    os.chmod(tmp_path / "a.sig", 0o640)
    _no_hard_links(monkeypatch)
    write_all([(tmp_path / n, b"new " + n.encode()) for n in ("a.sig", "b.sig")])
    assert (tmp_path / "a.sig").read_bytes() == b"new a.sig"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sig", "b.sig", "c.sig"]

    for name in ("a.sig", "b.sig"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    os.chmod(tmp_path / "a.sig", 0o640)
    _fail_rename_onto(monkeypatch, "c.sig")
    with pytest.raises(OperationalError) as err:
        write_all([(tmp_path / n, b"newer") for n in ("a.sig", "b.sig", "d.sig", "c.sig")])
    monkeypatch.undo()
    assert (tmp_path / "a.sig").read_bytes() == b"old a.sig"
    assert (tmp_path / "a.sig").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.sig").read_bytes() == b"old b.sig"
    assert (tmp_path / "c.sig").read_bytes() == b"old c.sig"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sig", "b.sig", "c.sig"]
    assert "(those renamed before it were put back)" in (err.value.hint or "")
    assert "could not be put back" not in err.value.message


def test_a_copied_backup_keeps_no_setuid_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is the signer's file (root's, when root signs) with the old .sig's bytes:
    with another user's 04755 kernel.sig (and its link count at the filesystem's limit,
    so link() fails EMLINK) the copy was a root setuid binary of that user's choosing,
    which that user could open and run while it existed (a review got euid 0). The copy
    keeps read and write bits only, and a restore puts those back."""
    target = tmp_path / "kernel.sig"
    target.write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(target, 0o4755)
    _no_hard_links(monkeypatch)
    from trustboot.cms import sign

    modes: list[int] = []
    real_write_temp = sign.write_temp  # type: ignore[attr-defined]

    def spy(*args: Any, **kw: Any) -> Any:
        made = real_write_temp(*args, **kw)
        name = made[0] if isinstance(made, tuple) else made
        modes.append(os.stat(name, dir_fd=kw.get("dir_fd")).st_mode)
        return made

    monkeypatch.setattr(sign, "write_temp", spy)
    write_all([(target, b"new signature")])
    monkeypatch.undo()
    assert len(modes) == 2, modes  # the new signature and the copy of the old
    assert all(mode & 0o7000 == 0 and mode & 0o111 == 0 for mode in modes), \
        [oct(m) for m in modes]
    assert target.read_bytes() == b"new signature"


def test_a_target_that_could_not_be_put_back_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither a link nor a copy of the old a.sig (unreadable here): the run goes on,
    and when a later rename fails the error names a.sig as not put back, instead of
    claiming every one was."""
    for name in ("a.sig", "b.sig"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    _no_hard_links(monkeypatch)
    real_open = os.open

    def no_read(path: str, flags: int, mode: int = 0o777, *,
                dir_fd: int | None = None) -> int:
        if Path(path).name == "a.sig" and not flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", no_read)
    _fail_rename_onto(monkeypatch, "b.sig")
    with pytest.raises(OperationalError) as err:
        write_all([(tmp_path / n, b"new") for n in ("a.sig", "b.sig")])
    monkeypatch.undo()
    assert f"could not be put back: {tmp_path / 'a.sig'}" in err.value.message
    assert "were put back" not in (err.value.hint or "")
    assert (tmp_path / "b.sig").read_bytes() == b"old b.sig"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sig", "b.sig"]


def test_a_fresh_backup_of_an_old_sig_is_not_swept(tmp_path: Path) -> None:
    """A commit's backup is a hard link to the old FILE.sig and carries its mtime (a day
    old): a concurrent run's stale-temp sweep judged by mtime removed it at once, though
    the committing run may still need it. Judged by ctime (link() sets it), it stays;
    what is really an hour old still goes."""
    from trustboot.fsutil import remove_stale_temps

    sig = tmp_path / "kernel.sig"
    sig.write_bytes(b"yesterday's signature")
    day_ago = time.time() - 86400
    os.utime(sig, (day_ago, day_ago))
    backup = tmp_path / ".kernel.sig.0123456789ab.0.old.tmp"
    os.link(sig, backup)
    assert backup.stat().st_mtime == pytest.approx(day_ago)
    assert remove_stale_temps(tmp_path, targets={"kernel.sig"}) == []
    assert backup.read_bytes() == b"yesterday's signature"
    assert remove_stale_temps(tmp_path, targets={"kernel.sig"}, older_than=-60) == [backup]
