"""The publish cache tells a run that a file with some stamp has some digest (so it is
signed without being hashed again) and that an object on the origin was verified (so it
is not read back). Whoever can write the cache decides what gets signed: a cache file
that another user owns or could have written is ignored (it only costs time)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.publish.conftest import Pki, ReleaseFactory
from trustboot.publish.cache import PublishCache


def _poisoned(path: Path, victim: Path) -> str:
    """A cache claiming ``victim`` (as it is now) has another file's digest."""
    forged = hashlib.sha256(b"the attacker's kernel").hexdigest()
    cache = PublishCache(path)
    cache.remember_local(victim, victim.stat(), forged)
    cache.remember_verified("file:///srv/boot/", "releases/r1/vmlinuz", size=3,
                            etag='"x"', sha256=forged)
    cache.save()
    assert PublishCache(path).local_digest(victim, victim.stat()) == forged
    return forged


def _trusted(path: Path, victim: Path) -> bool:
    cache = PublishCache(path)
    return cache.local_digest(victim, victim.stat()) is not None or cache.is_verified(
        "file:///srv/boot/", "releases/r1/vmlinuz", size=3, etag='"x"',
        sha256=hashlib.sha256(b"the attacker's kernel").hexdigest())


def test_a_cache_others_can_write_is_ignored(tmp_path: Path) -> None:
    victim = tmp_path / "vmlinuz"
    victim.write_bytes(b"the real kernel")
    path = tmp_path / "cache" / "publish-cache.json"
    _poisoned(path, victim)
    os.chmod(path, 0o666)
    assert not _trusted(path, victim)
    os.chmod(path, 0o600)
    assert _trusted(path, victim)  # the control: our own private cache is used


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_cache_owned_by_another_user_is_ignored(tmp_path: Path) -> None:
    victim = tmp_path / "vmlinuz"
    victim.write_bytes(b"the real kernel")
    path = tmp_path / "cache" / "publish-cache.json"
    _poisoned(path, victim)
    os.chown(path, 65534, 65534)  # nobody: e.g. planted in a shared XDG_CACHE_HOME
    assert not _trusted(path, victim)


def test_a_damaged_cache_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """Entries of another shape (a truncated or hand-edited file) are dropped when the
    cache is read: saving a full cache sorted them by their last element, and a run
    ended in an internal error (exit 70) instead of ignoring them."""
    import json

    from trustboot.publish import cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_ENTRIES", 2)
    path = tmp_path / "publish-cache.json"
    path.write_text(json.dumps({"version": 1, "verified": {}, "local": {
        "a": ["0" * 64, 1.0], "b": [], "c": "x", "d": ["0" * 64, "late"], "e": [True]}}))
    os.chmod(path, 0o600)
    cache = PublishCache(path)
    assert set(cache.local) == {"a"}
    victim = tmp_path / "vmlinuz"
    victim.write_bytes(b"k")
    for n in range(3):
        cache.remember_local(victim, victim.stat(), f"{n:064x}")
        victim.write_bytes(b"k" * (n + 2))  # another identity each time
    cache.save()
    assert len(PublishCache(path).local) == 2


def _another_users_link(tmp_path: Path) -> tuple[Path, Path]:
    """A home owned by another user (nobody) whose ~/.cache is that user's link to a
    directory of their choice: what root meets when run with their HOME (sudo -E)."""
    home, victim = tmp_path / "home", tmp_path / "victim"
    home.mkdir()
    victim.mkdir(mode=0o755)
    (home / ".cache").symlink_to(victim)
    os.lchown(home / ".cache", 65534, 65534)
    os.chown(home, 65534, 65534)
    return home, victim


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a link to another user")
def test_a_cache_behind_another_users_link_is_not_used(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from trustboot.publish.cache import default_cache_path

    home, victim = _another_users_link(tmp_path)
    monkeypatch.delenv("TRUSTBOOT_PUBLISH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    # what the link's owner planted there is not read ...
    planted = victim / "trustboot" / "publish-cache.json"
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    _poisoned(planted, kernel)
    cache = PublishCache(default_cache_path())
    assert cache.problem and "symbolic link owned by uid 65534" in cache.problem
    assert cache.local == {} and cache.verified == {}
    # ... and nothing is created through it
    assert cache.local_digest(kernel, kernel.stat()) is None
    planted.unlink()
    planted.parent.rmdir()
    cache.remember_local(kernel, kernel.stat(), "0" * 64)
    cache.save()
    assert list(victim.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a link to another user")
def test_publish_with_another_users_home_warns_once_and_publishes(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    home, victim = _another_users_link(tmp_path)
    monkeypatch.delenv("TRUSTBOOT_PUBLISH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    r = make_release({"boot.ipxe": b"#!ipxe\necho cache\n"})
    res = CliRunner().invoke(cli, ["publish", str(r), f"file://{tmp_path}/srv",
                                   "--release-id", "h1", "--pki", str(pki.dir)])
    assert res.exit_code == 0, res.output
    assert res.output.count("warning: publish cache") == 1, res.output
    assert "switched boot.ipxe to h1" in res.output
    assert list(victim.iterdir()) == []
