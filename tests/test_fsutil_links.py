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
