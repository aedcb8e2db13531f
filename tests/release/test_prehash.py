"""`trustboot release` hashing its inputs from start-up (trustboot.release.prehash),
against the real nginx WebDAV/TLS origin: neither the plan nor the staging upload hashes
them again; an input written after it was hashed is hashed again (the release is of what
is on disk), and one written while it is uploaded is refused; a recipe that fails
validation leaves no hashing process behind; the CLI hashes early only when it draws
nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from tests.publish.conftest import Nginx, Pki, anon_get
from tests.release.lab import make_lab
from tests.release.test_staging import BIG, SMALL, _release, _Touch
from trustboot.cli.main import cli
from trustboot.cms import digest as digest_mod
from trustboot.cms.digest import HashJob, recall
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish import stream
from trustboot.release import prehash, staging
from trustboot.release.recipe import load_recipe


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test a moment ago count as settled (see RACY_WINDOW_NS):
    otherwise nothing hashed may be remembered, early or not."""
    monkeypatch.setattr(digest_mod, "RACY_WINDOW_NS", -(10 ** 12))
    monkeypatch.setattr(staging, "RACY_WINDOW_NS", -(10 ** 12))


@pytest.fixture
def hashed_here(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths this process hashes with cms.digest.hash_file from now on (the early
    hashing's forked processes are not this process: their calls are not listed)."""
    calls: list[Path] = []
    real = digest_mod.hash_file

    def spy(path: Path, *args: Any, **kwargs: Any) -> tuple[dict[str, bytes], int]:
        if os.getpid() == parent:
            calls.append(Path(path))
        return real(path, *args, **kwargs)

    parent = os.getpid()
    monkeypatch.setattr(digest_mod, "hash_file", spy)
    return calls


class _NoHashUpload:
    def __init__(self, *_: object) -> None:
        raise AssertionError("the staging upload hashed an input hashed at start-up")


def _images(recipe: Path) -> dict[str, Path]:
    return {p.name: p for p in (recipe.parent / "images").iterdir()}


def test_inputs_hashed_at_start_up_are_not_hashed_again(
        pki: Pki, nginx: Nginx, tmp_path: Path, settled: None, hashed_here: list[Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = make_lab(tmp_path / "lab", pki, nginx.url,
                      images={"vmlinuz": SMALL, "initrd.img": BIG})
    job = prehash.start(load_recipe(recipe), (), None)
    assert job is not None
    prehash.settle(job)  # (in a thread or forked processes: either way, done here)
    hashed_here.clear()
    # digesting_chunks (the staging upload) makes its hashers with hashlib.new;
    # hashed_chunks (the .sig files, made just now) keeps hashlib.sha256
    monkeypatch.setattr(stream, "hashlib",
                        SimpleNamespace(new=_NoHashUpload, sha256=hashlib.sha256))
    result = _release(recipe, tmp_path / "cache.json", hashing=job)
    images = _images(recipe)
    assert not set(hashed_here) & {p.resolve() for p in images.values()}, hashed_here
    # what was published is what is on disk, and the origin serves it
    files = {f["name"]: f for f in result.manifest["files"]} if result.manifest else {}
    for name, path in images.items():
        data = path.read_bytes()
        assert files[f"linux/{name}"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert anon_get(f"{nginx.url}releases/{result.release}/linux/{name}",
                        pki).content == data
    assert "2 staged" not in str(result.stages) and "1 staged" in str(result.stages)


def test_an_input_written_after_it_was_hashed_is_hashed_again(
        pki: Pki, nginx: Nginx, tmp_path: Path, settled: None) -> None:
    recipe = make_lab(tmp_path / "lab", pki, nginx.url,
                      images={"vmlinuz": SMALL, "initrd.img": BIG})
    job = prehash.start(load_recipe(recipe), (), None)
    prehash.settle(job)
    initrd = recipe.parent / "images" / "initrd.img"
    old = initrd.read_bytes()
    assert recall(os.stat(initrd), "sha256") == hashlib.sha256(old).digest()
    new = os.urandom(len(old))  # the same size: only the stamp tells
    initrd.write_bytes(new)
    result = _release(recipe, tmp_path / "cache.json", hashing=job)
    files = {f["name"]: f for f in result.manifest["files"]} if result.manifest else {}
    assert files["linux/initrd.img"]["sha256"] == hashlib.sha256(new).hexdigest()
    assert anon_get(f"{nginx.url}releases/{result.release}/linux/initrd.img",
                    pki).content == new


def test_an_input_written_while_uploaded_is_refused(pki: Pki, nginx: Nginx, tmp_path: Path,
                                                     settled: None) -> None:
    recipe = make_lab(tmp_path / "lab", pki, nginx.url,
                      images={"vmlinuz": SMALL, "initrd.img": 12 * stream.CHUNK})
    job = prehash.start(load_recipe(recipe), (), None)
    with pytest.raises(OperationalError, match=r"initrd\.img changed"):
        _release(recipe, tmp_path / "cache.json", hashing=job,
                 upload_progress=_Touch(recipe.parent / "images" / "initrd.img"))
    assert not (nginx.root / "boot.ipxe").exists()


def test_a_failed_validation_leaves_no_hashing_process(pki: Pki, nginx: Nginx,
                                                       tmp_path: Path) -> None:
    recipe = make_lab(tmp_path / "lab", pki, nginx.url,
                      images={"vmlinuz": SMALL, "initrd.img": BIG})
    (recipe.parent / "key.pass").write_text("not the passphrase\n")
    text = recipe.read_text().replace("key: boot-signer", "key: nobody-signer")
    recipe.write_text(text)
    job = prehash.start(load_recipe(recipe), (), None)
    assert job is not None
    with pytest.raises(ConfigError):
        _release(recipe, tmp_path / "cache.json", hashing=job)
    # cancelled: its processes stopped and waited for, or its thread joined
    assert job._cancel.is_set()
    assert job.processes == 0
    assert job._thread is None or not job._thread.is_alive()


def test_nothing_is_hashed_early_for_a_recipe_whose_inputs_do_not_resolve(
        pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    recipe = make_lab(tmp_path / "lab", pki, nginx.url,
                      images={"vmlinuz": SMALL, "initrd.img": BIG})
    outside = tmp_path / "elsewhere.img"
    outside.write_bytes(b"x" * 1000)
    recipe.write_text(recipe.read_text().replace("images/initrd.img", "../elsewhere.img"))
    assert prehash.start(load_recipe(recipe), (), None) is None
    assert prehash.start(load_recipe(recipe), (tmp_path,), None) is not None


def test_inputs_the_publish_cache_knows_are_not_read(pki: Pki, nginx: Nginx, tmp_path: Path,
                                                     settled: None) -> None:
    recipe = make_lab(tmp_path / "lab", pki, nginx.url,
                      images={"vmlinuz": SMALL, "initrd.img": BIG})
    cache = tmp_path / "cache.json"
    _release(recipe, cache)  # remembers both inputs' digests
    assert prehash.start(load_recipe(recipe), (), cache) is None
    assert prehash.start(load_recipe(recipe), (), None) is not None


@pytest.mark.parametrize("interactive", [False, True])
def test_the_cli_hashes_early_only_when_it_draws_nothing(
        pki: Pki, nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        interactive: bool) -> None:
    recipe = make_lab(tmp_path / "lab", pki, nginx.url,
                      images={"vmlinuz": SMALL, "initrd.img": BIG})
    started: list[HashJob | None] = []
    real = prehash.start

    def spy(*args: Any) -> HashJob | None:
        job = real(*args)
        started.append(job)
        return job

    monkeypatch.setattr(prehash, "start", spy)
    monkeypatch.setattr("trustboot.cli.release.is_interactive", lambda: interactive)
    monkeypatch.setenv("TRUSTBOOT_PUBLISH_CACHE", str(tmp_path / "cache.json"))
    args = ["release", str(recipe)] + ([] if interactive else ["--json"])
    if interactive:
        args += ["--passphrase-file", str(recipe.parent / "key.pass")]
    out = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert (len(started) == 0) if interactive else (started and started[0] is not None)
    assert dt.datetime.now(dt.UTC)  # (the run ended; nothing more to wait for)
