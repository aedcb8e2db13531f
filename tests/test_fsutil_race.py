"""A directory created for output or for the iPXE cache is checked again once it and
its parents exist: a parent that was missing when check_parents looked is created by
make_dirs, unless another local user creates it first (in a sticky /tmp they can, at
any moment), and make_dirs keeps an existing directory. Theirs would then hold ours:
they could move it away with what trustboot wrote (signatures, firmware, a cache hit's
firmware) and put their own in its place."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import dir_of_nobody
from trustboot import fsutil
from trustboot.errors import ConfigError
from trustboot.ipxe.build import prepare_cache_dir


def _sticky(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # as /tmp
    return shared


def _they_win_the_race(monkeypatch: pytest.MonkeyPatch, theirs: Path) -> None:
    """make_dirs, as if the other user created ``theirs`` (0777) just before it ran."""
    real: Callable[..., Path] = fsutil.make_dirs

    def racing(path: Path, *args: object, **kw: object) -> Path:
        if not theirs.exists():
            dir_of_nobody(theirs)
            os.chmod(theirs, 0o777)
        return real(path, *args, **kw)

    monkeypatch.setattr(fsutil, "make_dirs", racing)


def test_an_output_directory_under_a_parent_created_by_another_user_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _sticky(tmp_path)
    _they_win_the_race(monkeypatch, shared / "build")
    with pytest.raises(ConfigError, match="above it is owned by uid 65534"):
        fsutil.make_output_dir(shared / "build" / "out", "--out directory")


def test_a_cache_under_a_parent_created_by_another_user_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _sticky(tmp_path)
    _they_win_the_race(monkeypatch, shared / "cache-parent")
    with pytest.raises(ConfigError, match="above it is owned by uid 65534"):
        prepare_cache_dir(shared / "cache-parent" / "trustboot")


def test_without_a_race_both_are_created(tmp_path: Path) -> None:
    shared = _sticky(tmp_path)
    assert fsutil.make_output_dir(shared / "build" / "out", "--out directory").is_dir()
    cache = prepare_cache_dir(shared / "cache-parent" / "trustboot")
    assert (cache.stat().st_mode & 0o777) == 0o700


def test_an_absolute_path_is_checked_from_a_directory_that_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_parents' walk asked getcwd for every path: run from a removed directory
    (a CI workspace cleaned under a shell), any absolute --out was an internal error."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    fsutil.check_parents(tmp_path / "out", "--out directory")
