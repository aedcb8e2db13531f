"""fsutil's writers never write through a link planted where their file goes: the file a
key or signature is streamed into (create_file) and a temp file with a name its caller
must find again (write_temp(name=...)) are created with O_NOFOLLOW (and the temp with
O_EXCL), so a link there is refused and its target stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustboot.fsutil import PRIVATE_FILE_MODE, create_file, write_temp


def test_create_file_refuses_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    link = tmp_path / "client.key"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        create_file(link, PRIVATE_FILE_MODE)
    assert victim.read_bytes() == b"original"
    assert link.is_symlink()


@pytest.mark.parametrize("planted", ["link", "file"])
def test_a_named_temp_file_is_created_exclusively(tmp_path: Path, planted: str) -> None:
    target = tmp_path / "vmlinuz.sig"
    name = ".vmlinuz.sig.0123.0.tmp"
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    if planted == "link":
        (tmp_path / name).symlink_to(victim)
    else:
        (tmp_path / name).write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        write_temp(target, b"signature", name=name)
    assert victim.read_bytes() == b"original"
    assert not target.exists()
    if planted == "file":
        assert (tmp_path / name).read_bytes() == b"someone else's"


@pytest.mark.parametrize("name", [None, ".big.sig.0123.0.tmp"])
def test_a_temp_file_holds_every_byte_with_its_mode_whatever_the_umask(
        tmp_path: Path, name: str | None) -> None:
    import os
    import stat

    data = os.urandom(3 << 20)  # larger than one write() may take
    old = os.umask(0o077)
    try:
        tmp = write_temp(tmp_path / "big.sig", data, mode=0o644, name=name)
    finally:
        os.umask(old)
    assert tmp.parent == tmp_path and tmp.name != "big.sig"
    assert tmp.read_bytes() == data
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o644


def test_a_temp_file_that_cannot_be_written_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    def full(_fd: int, _data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as err:
        write_temp(tmp_path / "x.sig", b"signature", name=".x.sig.0123.0.tmp")
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_open_beneath_follows_no_link_on_the_way(tmp_path: Path) -> None:
    """Every component is opened without following a link: a directory replaced by a
    link to one elsewhere is refused (ELOOP) as a link in the last component is; a file
    where a directory belongs is ENOTDIR; '..' and absolute paths are not taken."""
    import errno
    import os

    from trustboot.fsutil import open_beneath

    root = tmp_path / "tree"
    (root / "src" / "bin").mkdir(parents=True)
    (root / "src" / "bin" / "ipxe.lkrn").write_bytes(b"firmware")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ipxe.lkrn").write_bytes(b"host file")
    fd = open_beneath(root, "src/bin/ipxe.lkrn")
    assert os.read(fd, 100) == b"firmware"
    os.close(fd)
    (root / "src" / "bin" / "link.lkrn").symlink_to(elsewhere / "ipxe.lkrn")
    (root / "src" / "bin-efi").symlink_to(elsewhere)
    (root / "src" / "file").write_bytes(b"")
    for rel, code in (("src/bin/link.lkrn", errno.ELOOP), ("src/bin-efi/ipxe.lkrn", errno.ELOOP),
                      ("src/file/ipxe.lkrn", errno.ENOTDIR)):
        with pytest.raises(OSError) as info:
            open_beneath(root, rel)
        assert info.value.errno == code, rel
    with pytest.raises(OSError) as info:
        open_beneath(root, "src/bin-efi", os.O_RDONLY | os.O_DIRECTORY)
    assert info.value.errno == errno.ELOOP
    for rel in ("../elsewhere/ipxe.lkrn", "/etc/passwd", "src//bin/ipxe.lkrn"):
        with pytest.raises(ValueError):
            open_beneath(root, rel)
