"""The read-back compares a served object with the file it was published from, when this
process hashed that file and it is unchanged, instead of hashing it: the digests are
always those of exactly the bytes served, a difference anywhere is still caught, and a
file written meanwhile never lends its digests to bytes nobody hashed."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.publish.conftest import Nginx, Pki, ReleaseFactory
from tests.publish.test_faults import ENTRY_A, ENTRY_B, _Tamper, options_of, trust_of
from trustboot.cms import digest as digest_mod
from trustboot.cms.digest import file_stamp
from trustboot.errors import VerificationError
from trustboot.publish import readback
from trustboot.publish.origin import open_origin
from trustboot.publish.pipeline import (
    EARLY_READBACK_MIN,
    LOCAL_COMPARE_MIN,
    publish_release,
    scan_directory,
)
from trustboot.publish.readback import LocalCopy, Reader, Tally

# Digests no hash of these bytes gives: returned only if the bytes were compared, not hashed.
PLANTED = {"sha256": b"\x01" * 32, "sha384": b"\x02" * 48}
SIZE = 3 * readback.CHUNK + 12345


def _copy(path: Path, data: bytes, digests: dict[str, bytes] | None = None) -> LocalCopy:
    path.write_bytes(data)
    return LocalCopy(path, file_stamp(os.stat(path)), dict(digests or PLANTED))


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    at, i = 0, 0
    while at < len(data):
        n = sizes[i % len(sizes)]
        yield data[at:at + n]
        at, i = at + n, i + 1


def _tally(names: tuple[str, ...], local: LocalCopy | None, body: bytes,
           sizes: list[int]) -> dict[str, bytes] | None:
    tally = Tally(names, local)
    try:
        for chunk in _chunks(body, sizes):
            tally.feed(chunk)
        assert tally.size == len(body)
        return tally.result()
    finally:
        tally.close()


def _real(body: bytes, names: tuple[str, ...] = ("sha256",)) -> dict[str, bytes]:
    return {n: hashlib.new(n, body).digest() for n in names}


CHUNKINGS = [[readback.CHUNK], [1000, 1 << 16, readback.CHUNK + 7], [SIZE]]


@pytest.mark.parametrize("sizes", CHUNKINGS)
def test_bytes_equal_to_the_file_take_its_digests_unhashed(tmp_path: Path,
                                                           sizes: list[int]) -> None:
    data = os.urandom(SIZE)
    local = _copy(tmp_path / "initrd", data)
    assert _tally(("sha256",), local, data, sizes) == {"sha256": PLANTED["sha256"]}
    assert _tally(("sha256", "sha384"), local, data, sizes) == PLANTED


@pytest.mark.parametrize("sizes", CHUNKINGS)
@pytest.mark.parametrize("at", [0, readback.CHUNK + 5, SIZE - 1])
def test_a_difference_anywhere_gives_the_served_bytes_digests(tmp_path: Path, at: int,
                                                              sizes: list[int]) -> None:
    data = os.urandom(SIZE)
    local = _copy(tmp_path / "initrd", data)
    served = bytearray(data)
    served[at] ^= 0x40
    assert _tally(("sha256", "sha384"), local, bytes(served), sizes) == \
        _real(bytes(served), ("sha256", "sha384"))


@pytest.mark.parametrize("served_size", [0, 1, readback.CHUNK, SIZE - 1, SIZE + 1,
                                         SIZE + readback.CHUNK])
def test_a_shorter_or_longer_body_gives_its_own_digests(tmp_path: Path,
                                                        served_size: int) -> None:
    data = os.urandom(SIZE)
    local = _copy(tmp_path / "initrd", data)
    served = (data + os.urandom(served_size))[:served_size]
    assert _tally(("sha256",), local, served, [readback.CHUNK]) == _real(served)


def test_a_file_changed_since_it_was_hashed_is_not_compared(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    path = tmp_path / "initrd"
    local = _copy(path, data)
    os.utime(path, ns=(0, 0))  # same bytes, another stamp: nothing vouches for them
    assert _tally(("sha256",), local, data, [readback.CHUNK]) == _real(data)
    path.unlink()
    assert _tally(("sha256",), local, data, [readback.CHUNK]) == _real(data)


def test_a_fifo_or_a_link_in_its_place_is_not_compared(tmp_path: Path) -> None:
    data = os.urandom(1000)
    path = tmp_path / "initrd"
    local = _copy(path, data)
    other = tmp_path / "other"
    other.write_bytes(data)
    path.unlink()
    path.symlink_to(other)
    assert _tally(("sha256",), local, data, [500]) == _real(data)
    path.unlink()
    os.mkfifo(path)  # (would hang a blocking open)
    assert _tally(("sha256",), local, data, [500]) == _real(data)


def test_digests_the_file_was_not_hashed_with_are_hashed(tmp_path: Path) -> None:
    data = os.urandom(5000)
    local = _copy(tmp_path / "initrd", data, {"sha256": PLANTED["sha256"]})
    assert _tally(("sha256", "sha384"), local, data, [1000]) == \
        _real(data, ("sha256", "sha384"))


@pytest.mark.parametrize("then", ["equal", "different"])
def test_a_file_written_during_the_compare_makes_it_void(tmp_path: Path, then: str) -> None:
    data = os.urandom(SIZE)
    path = tmp_path / "initrd"
    local = _copy(path, data)
    tally = Tally(("sha256",), local)
    try:
        tally.feed(data[:readback.CHUNK])
        with open(path, "r+b") as fh:  # the same bytes, written again: a new stamp
            fh.write(data[:10])
        rest = data[readback.CHUNK:]
        if then == "different":
            rest = bytes([rest[0] ^ 1]) + rest[1:]
        tally.feed(rest)
        assert tally.result() is None
    finally:
        tally.close()


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    data = os.urandom(SIZE)
    local = _copy(tmp_path / "initrd", data)
    for body in (data, data[:-1], data + b"x", b"y" + data[1:]):
        _tally(("sha256",), local, body, [readback.CHUNK])
    tally = Tally(("sha256",), local)  # abandoned mid-way (a TooLarge, a reset)
    tally.feed(data[:100])
    tally.close()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_local_copy_only_for_a_file_this_process_hashed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vmlinuz"
    path.write_bytes(os.urandom(5000))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert LocalCopy.of(path, digest) is None  # never hashed here
    digest_mod.hash_file(path, ["sha256"])
    assert LocalCopy.of(path, digest) is None  # hashed, but just written (racy window)
    monkeypatch.setattr(digest_mod, "RACY_WINDOW_NS", -(10 ** 12))
    digest_mod.hash_file(path, ["sha256"])
    copy = LocalCopy.of(path, digest)
    assert copy is not None and copy.digests["sha256"].hex() == digest
    assert LocalCopy.of(path, "00" * 32) is None  # another digest was published
    assert LocalCopy.of(tmp_path / "gone", digest) is None


@pytest.mark.parametrize("case", ["same", "tampered", "written-meanwhile"])
def test_the_https_read_back_compares(case: str, pki: Pki, nginx: Nginx, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(SIZE)
    local = _copy(tmp_path / "initrd", data)
    served = bytearray(data)
    if case == "tampered":
        served[SIZE // 2] ^= 1
    (nginx.root / "initrd").write_bytes(bytes(served))
    if case == "written-meanwhile":
        feed = Tally.feed

        def write_then_feed(self: Tally, chunk: bytes | bytearray | memoryview) -> None:
            if self.size == 0 and self._fd >= 0:
                os.utime(local.path, ns=(1, 1))  # a new stamp while it is compared
            feed(self, chunk)

        monkeypatch.setattr(Tally, "feed", write_then_feed)
    with Reader(ca_file=pki.ca) as reader:
        got = reader.stream(nginx.url + "initrd", max_size=SIZE, local=local)
    assert got.size == SIZE
    # compared: the planted digests; otherwise (read again and) hashed: the real ones
    assert got.digests == ({"sha256": PLANTED["sha256"]} if case == "same"
                           else _real(bytes(served)))


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[Tally]:
    """Files written by the test a moment ago count as settled, so publishing compares
    them; the Tallies made with a LocalCopy are listed."""
    monkeypatch.setattr(digest_mod, "RACY_WINDOW_NS", -(10 ** 12))
    made: list[Tally] = []
    init = Tally.__init__

    def record(self: Tally, names: tuple[str, ...], local: LocalCopy | None = None) -> None:
        init(self, names, local)
        if local is not None:
            made.append(self)

    monkeypatch.setattr(Tally, "__init__", record)
    return made


@pytest.mark.parametrize("tamper", [False, True])
def test_publishing_compares_and_still_catches_a_changed_object(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory, settled: list[Tally],
        tamper: bool) -> None:
    ra = make_release({"boot.ipxe": ENTRY_A})
    # larger than LOCAL_COMPARE_MIN, smaller than EARLY_READBACK_MIN: read back after every
    # upload, so after the tampering
    size = 2 << 20
    assert LOCAL_COMPARE_MIN <= size < EARLY_READBACK_MIN
    rb = make_release({"boot.ipxe": ENTRY_B, "vmlinuz": os.urandom(size)})
    target = nginx.root / "releases/rb/vmlinuz"
    with open_origin(nginx.url, options_of(pki)) as origin:
        publish_release(origin, "ra", scan_directory(ra), entry="boot.ipxe",
                        trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                        options=options_of(pki))
        settled.clear()
        objects = scan_directory(rb)
        if not tamper:
            publish_release(origin, "rb", objects, entry="boot.ipxe", trust=trust_of(pki),
                            now=dt.datetime.now(dt.UTC), options=options_of(pki))
        else:
            with pytest.raises(VerificationError) as err:
                publish_release(origin, "rb", objects, entry="boot.ipxe",
                                trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                                progress=_Tamper(target), options=options_of(pki))
            # one flipped bit, same size: what only a digest or a compare can see
            assert "releases/rb/vmlinuz" in err.value.message
            assert err.value.exit_code == 4
    # the large object was read back by comparing (the small ones are hashed)
    assert [t.size for t in settled] == [size]
    if not tamper:
        assert (nginx.root / "releases/rb/vmlinuz").read_bytes() == \
            (rb / "vmlinuz").read_bytes()


def _preadv_failing_after(monkeypatch: pytest.MonkeyPatch, good: int) -> list[int]:
    """os.preadv reads ``good`` times, then fails with EIO; the offsets asked for."""
    real = os.preadv
    calls: list[int] = []

    def failing(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(offset)
        if len(calls) > good:
            raise OSError(5, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", failing)
    return calls


@pytest.mark.parametrize("at", ["first", "later"])
def test_a_file_that_stops_reading_makes_the_compare_void(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    data = os.urandom(SIZE)
    local = _copy(tmp_path / "initrd", data)
    calls = _preadv_failing_after(monkeypatch, 0 if at == "first" else 1)
    assert _tally(("sha256",), local, data, [readback.CHUNK]) is None  # read it again
    assert calls


def test_a_file_that_stops_reading_during_the_catch_up_makes_the_compare_void(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shorter body equal to the file's start: its digests come from hashing those bytes
    of the file. If the file stops reading then, nothing vouches for what was fed: void
    (read it again), not an error taken for the origin's."""
    data = os.urandom(SIZE)
    local = _copy(tmp_path / "initrd", data)
    # the two compares pass; the catch-up's first read fails
    calls = _preadv_failing_after(monkeypatch, 2)
    assert _tally(("sha256",), local, data[:2 * readback.CHUNK], [readback.CHUNK]) is None
    assert calls == [0, readback.CHUNK, 0]
