"""The iPXE tree's size is bounded before any of it is read: every build hashes the tree
and copies it into the cache, so a sparse terabyte (free to make) or a huge file added to
src/ would fill the disk. A warm tree whose copy or make failed is not left behind.
Real files on disk, the fake tree, real make in the sandbox; no iPXE tree needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ipxe.fake_tree import make_fake_tree
from tests.ipxe.test_build_integrity import TARGET, _build, _request
from tests.ipxe.testpki import TestPki
from trustboot.errors import ConfigError, OperationalError
from trustboot.ipxe import source


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _refused(tree: Path, message: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        source.open_source(tree)
    assert info.value.exit_code == 3
    assert message in info.value.message, info.value.message
    return info.value


def test_a_sparse_file_is_refused_by_name_before_it_is_read(tmp_path: Path) -> None:
    """2 GiB apparent, nothing on disk: it was hashed, then copied as 2 GiB of blocks."""
    tree = make_fake_tree(tmp_path / "ipxe")
    big = _sparse(tree / "src" / "sparse.bin", 2 << 30)
    err = _refused(tree, "is 2147483648 bytes, more than the 64 MiB")
    assert str(big) in err.message
    big.unlink()
    hole = _sparse(tree / "src" / "hole.bin", 8 << 20)  # under the cap, all holes
    err = _refused(tree, "is a sparse file (8388608 bytes, 0 of them on disk)")
    assert str(hole) in err.message


def test_small_files_with_no_blocks_are_not_taken_for_sparse(tmp_path: Path) -> None:
    """Small files may live in the inode (0 blocks); only a large, mostly empty one is
    a sparse file. Neither changes what the tree hash is over."""
    tree = make_fake_tree(tmp_path / "ipxe")
    before = source.open_source(tree).tree_sha256
    _sparse(tree / "src" / "small.bin", 100 << 10)
    (tree / "src" / "tiny.h").write_text("/* x */\n")
    (tree / "src" / "empty.h").write_bytes(b"")
    assert source.open_source(tree).tree_sha256 != before


def test_a_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    tree = make_fake_tree(tmp_path / "ipxe")
    huge = tree / "src" / "huge.bin"
    with huge.open("wb") as f:
        for _ in range(64):
            f.write(b"\1" * (1 << 20))
    source.open_source(tree)  # 64 MiB: the cap itself
    with huge.open("ab") as f:
        f.write(b"\1")
    err = _refused(tree, "is 67108865 bytes, more than the 64 MiB a tree's file may have")
    assert str(huge) in err.message


def test_a_tree_over_the_cap_is_refused(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """(512 MiB of real files is too much disk for a test: the cap is lowered to 1 MiB.)"""
    monkeypatch.setattr(source, "MAX_TREE", 1 << 20)
    tree = make_fake_tree(tmp_path / "ipxe")
    for i in range(3):
        (tree / "src" / f"part{i}.bin").write_bytes(b"\1" * (300 << 10))
    source.open_source(tree)
    (tree / "src" / "part3.bin").write_bytes(b"\1" * (300 << 10))
    _refused(tree, "the iPXE tree's files add up to more than 1 MiB")


def _warm_trees(env: dict[str, Path]) -> list[Path]:
    return [p for p in (env["cache"] / "work").glob("warm-*") if p.is_dir()]


def test_a_warm_tree_whose_copy_failed_is_removed(env: dict[str, Path],
                                                  pki: TestPki) -> None:
    """A tree identified clean, then given a sparse file: the copy refuses it (ConfigError,
    before reading it) and no half-copied warm tree stays in the cache."""
    for i in range(3):  # some files to copy before the refusal
        (env["tree"] / "src" / f"a{i}.h").write_text("/* copied */\n")
    request = _request(env["tree"], pki)
    _sparse(env["tree"] / "src" / "zz-sparse.bin", 2 << 30)
    with pytest.raises(ConfigError, match="more than the 64 MiB"):
        _build(request, env, "first")
    assert _warm_trees(env) == []


def test_a_warm_tree_whose_first_make_failed_is_removed(
        env: dict[str, Path], pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(OperationalError, match="make failed"):
        _build(_request(env["tree"], pki), env, "first")
    assert _warm_trees(env) == []
    monkeypatch.delenv("FAKE_FAIL")
    result = _build(_request(env["tree"], pki), env, "again")  # and the next build works
    assert result.outputs[TARGET].is_file()
    assert len(_warm_trees(env)) == 1  # kept warm once make succeeded

