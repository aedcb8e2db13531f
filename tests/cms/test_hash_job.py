"""HashJob's forked hashers: what a child reports when its file moves, and that none
outlives the command that started it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from trustboot.cms import digest
from trustboot.cms.digest import PROCESS_MIN_FILES, HashJob


@pytest.fixture
def no_other_threads() -> None:
    import threading

    deadline = time.monotonic() + 10
    while [t for t in threading.enumerate() if t is not threading.current_thread()]:
        if time.monotonic() > deadline:
            pytest.skip("threads an earlier test left running: HashJob would not fork")
        time.sleep(0.02)


@pytest.mark.usefixtures("no_other_threads")
def test_a_directory_renamed_after_its_file_was_read_is_not_an_internal_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forked hasher looked the path up again after reading it (for the file's
    stamp): a directory renamed meanwhile made that fail outside the OSError handling,
    and `sign` exited 70. The stamp is the read descriptor's: the digests stand."""
    stage = tmp_path / "stage"
    stage.mkdir()
    files = [stage / f"f{i}" for i in range(PROCESS_MIN_FILES)]
    for i, path in enumerate(files):
        path.write_bytes(b"x" * i)
    real = digest.hash_file

    def then_rename(path: Path, names: Sequence[str], *args: object,
                    **kwargs: object) -> tuple[dict[str, bytes], int]:
        out = real(path, names, *args, **kwargs)  # type: ignore[arg-type]
        if path == files[0]:  # in the child, between the read and what follows it
            stage.rename(tmp_path / "stage.moved")
        return out

    monkeypatch.setattr(digest, "hash_file", then_rename)
    job = HashJob(files, "sha256")
    assert job.processes == 1  # the forked path
    hashed = job.result()
    assert [h.digests["sha256"] for h in hashed] == [
        hashlib.sha256(b"x" * i).digest() for i in range(len(files))]

