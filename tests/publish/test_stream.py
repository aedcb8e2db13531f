"""The upload stream: a file this process just hashed is not hashed again, and a file
written while it is sent still fails the upload (by its stamp or by its digest)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from trustboot.cms import digest as digest_mod
from trustboot.cms.digest import hash_file, recall
from trustboot.errors import OperationalError
from trustboot.publish import stream


class NoHash:
    def __init__(self, *_: object) -> None:
        raise AssertionError("the stream hashed a file whose digest this process knew")


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test a moment ago count as settled (see RACY_WINDOW_NS)."""
    monkeypatch.setattr(digest_mod, "RACY_WINDOW_NS", -(10 ** 12))


def test_a_file_written_a_moment_ago_is_not_remembered(tmp_path: Path) -> None:
    f = tmp_path / "fresh"
    f.write_bytes(b"x" * 5000)
    hash_file(f, ["sha256"])
    assert recall(os.stat(f), "sha256") is None


def test_a_file_just_hashed_is_streamed_without_hashing_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_racy_window: None) -> None:
    f = tmp_path / "vmlinuz"
    data = os.urandom(3 << 20)
    f.write_bytes(data)
    digests, size = hash_file(f, ["sha256"])
    assert recall(os.stat(f), "sha256") == digests["sha256"]
    monkeypatch.setattr(hashlib, "sha256", NoHash)
    sent = b"".join(stream.hashed_chunks(f, size=size, sha256=digests["sha256"].hex(),
                                         chunk=1 << 20))
    assert sent == data


@pytest.mark.parametrize("hashed_first", [True, False])
def test_a_file_written_during_the_upload_fails_it(tmp_path: Path, hashed_first: bool,
                                                  no_racy_window: None) -> None:
    f = tmp_path / "initrd"
    data = os.urandom(4 << 20)
    f.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    if hashed_first:
        hash_file(f, ["sha256"])
        assert recall(os.stat(f), "sha256") is not None
    chunks = stream.hashed_chunks(f, size=len(data), sha256=sha, chunk=1 << 20, depth=1)
    first = next(chunks)
    with open(f, "r+b") as fh:  # same size, other bytes, written mid-stream
        fh.seek(len(data) - 10)
        fh.write(b"0123456789")
    with pytest.raises(OperationalError, match="changed while it was uploaded"):
        for _ in chunks:
            pass
    assert first == data[: 1 << 20]


def test_a_stamp_that_changed_since_hashing_means_hashing_again(tmp_path: Path) -> None:
    f = tmp_path / "initrd"
    f.write_bytes(b"a" * 1000)
    hash_file(f, ["sha256"])
    f.write_bytes(b"b" * 1000)  # same size, new content: the memo must not apply
    with pytest.raises(OperationalError, match="changed while it was uploaded"):
        list(stream.hashed_chunks(f, size=1000, sha256=hashlib.sha256(b"a" * 1000)
                                  .hexdigest()))
    good = hashlib.sha256(b"b" * 1000).hexdigest()
    assert b"".join(stream.hashed_chunks(f, size=1000, sha256=good)) == b"b" * 1000


def test_a_fifo_swapped_in_after_the_scan_is_refused_without_hanging(tmp_path: Path) -> None:
    f = tmp_path / "vmlinuz"
    os.mkfifo(f)
    with pytest.raises(OperationalError, match="no longer a regular file"):
        list(stream.hashed_chunks(f, size=10, sha256="0" * 64))
