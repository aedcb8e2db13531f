"""An ETag made from the modification time in whole seconds (nginx: mtime-size) survives a
same-size write in that second: it stands for bytes read back earlier only once settled
(the object last written in an earlier second than the server's answer)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.publish.conftest import Nginx, Pki, ReleaseFactory, anon_get
from tests.publish.test_faults import ENTRY_A, ENTRY_B, options_of, publish, trust_of
from trustboot.errors import VerificationError
from trustboot.publish import pipeline, webdav
from trustboot.publish.cache import PublishCache
from trustboot.publish.origin import open_origin
from trustboot.publish.pipeline import EARLY_READBACK_MIN, publish_release, scan_directory

T = "Fri, 27 Nov 2026 20:00:00 GMT"


@pytest.mark.parametrize("modified,date,settled", [
    (T, "Fri, 27 Nov 2026 20:00:01 GMT", True),
    ("Fri, 27 Nov 2026 19:59:59 GMT", T, True),
    (T, T, False),  # the same second: a write now may keep the ETag
    ("Fri, 27 Nov 2026 20:00:05 GMT", T, False),  # modified "later" than now: a skewed clock
    (None, T, False), (T, None, False), ("", T, False),
    ("yesterday", T, False), (T, "Fri, 27 Nov 2026 25:00:00 GMT", False),
    ("Fri, 27 Nov 2026 19:00:00 -0000", T, False),  # no time zone known
    # numbers Python's date parser overflows on: an origin's header, not a crash (exit 70)
    ("Mon, 01 Jan 2020 00:00:00 +99999999999999999999", T, False),
    (T, "Mon, 01 Jan 99999999999999999999 00:00:00 GMT", False),
])
def test_etag_settled(modified: str | None, date: str | None, settled: bool) -> None:
    assert webdav.etag_settled(modified, date) is settled


def test_nginx_answers_settle_a_second_after_the_write(pki: Pki, nginx: Nginx) -> None:
    path = nginx.root / "f"
    path.write_bytes(b"x" * 10)
    with open_origin(nginx.url, options_of(pki)) as origin:
        assert origin.stat("f") is not None
        os.utime(path, (0, 4102444800))  # 2100: written "in the future" of every answer
        st = origin.stat("f")
        assert st is not None and st.etag and not st.settled
        os.utime(path, (0, 946684800))  # 2000
        st = origin.stat("f")
        assert st is not None and st.settled


class _SameSecondTamper:
    """When the read-back phase starts (after any early read-back), writes other bytes of
    the same size into the object and gives it back its modification time: what a write
    in the second of the upload leaves, the same nginx ETag (mtime-size)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def phase(self, name: str, total_bytes: int) -> None:
        if name == "readback":
            st = self.path.stat()
            data = bytearray(self.path.read_bytes())
            data[-1] ^= 1
            self.path.write_bytes(bytes(data))
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def advance(self, nbytes: int) -> None:
        pass

    def item(self, key: str, action: str) -> None:
        pass


def test_an_unsettled_object_is_read_back_with_the_others(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploaded and looked at in the same second (forced here): no early read-back, whose
    re-check by ETag could not see a same-size write in that second; the read-back after
    every upload sees it, and nothing is switched."""
    ra = make_release({"boot.ipxe": ENTRY_A})
    assert publish(pki, ra, nginx.url, "ra").exit_code == 0
    monkeypatch.setattr(webdav, "etag_settled", lambda *_: False)
    size = EARLY_READBACK_MIN + (1 << 20)
    rb = make_release({"boot.ipxe": ENTRY_B, "vmlinuz": os.urandom(size)})
    sink = _SameSecondTamper(nginx.root / "releases/rb/vmlinuz")
    with open_origin(nginx.url, options_of(pki)) as origin:
        with pytest.raises(VerificationError) as err:
            publish_release(origin, "rb", scan_directory(rb), entry="boot.ipxe",
                            trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                            progress=sink, options=options_of(pki))
    assert "releases/rb/vmlinuz" in err.value.message and err.value.exit_code == 4
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY_A


@pytest.mark.parametrize("settled", [True, False])
def test_only_settled_objects_are_remembered_as_verified(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, settled: bool) -> None:
    """The publish cache lets a later run skip reading back an object whose size and ETag
    are unchanged: only an ETag no later write can keep may stand for that."""
    monkeypatch.setattr(webdav, "etag_settled", lambda *_: settled)
    rel = make_release({"boot.ipxe": ENTRY_B, "vmlinuz": os.urandom(2 << 20)})
    cache = PublishCache(tmp_path / "cache.json")
    with open_origin(nginx.url, options_of(pki)) as origin:
        publish_release(origin, "r1", scan_directory(rel, cache=cache), entry="boot.ipxe",
                        trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                        options=options_of(pki), cache=cache)
        st = origin.stat("releases/r1/vmlinuz")
    assert st is not None
    sha256 = next(o.sha256 for o in scan_directory(rel) if o.key == "vmlinuz")
    remembered = PublishCache(tmp_path / "cache.json").is_verified(
        nginx.url, "releases/r1/vmlinuz", size=st.size, etag=st.etag, sha256=sha256)
    assert remembered is settled


class _SlowUploads:
    """Holds the upload phase open for ``hold`` seconds once ``key`` is uploaded (after
    its early read-back was submitted), then runs ``after``; records the phases."""

    def __init__(self, key: str, hold: float, events: list[str],
                 on_uploaded: Callable[[], None], after: Callable[[], None]) -> None:
        self.key, self.hold, self.events = key, hold, events
        self.on_uploaded, self.after = on_uploaded, after

    def phase(self, name: str, total_bytes: int) -> None:
        self.events.append(f"phase {name}")

    def advance(self, nbytes: int) -> None:
        pass

    def item(self, key: str, action: str) -> None:
        if key == self.key and action == "uploaded":
            self.on_uploaded()
            time.sleep(self.hold)
            self.after()


@pytest.mark.parametrize("case", ["settles", "settles-then-changes", "still-unsettled",
                                  "uploads-end-first"])
def test_an_unsettled_object_is_read_back_early_once_settled(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Looked at in the second it was written in, a large object is looked at again a
    second later, while the others still upload, and read back then if settled; a change
    after that read-back is caught by the re-check before the switch. Still unsettled then:
    read back with the others. And the run does not wait on that look once the uploads
    are over."""
    settles = case.startswith("settles")
    ready_at = [float("inf")]
    monkeypatch.setattr(webdav, "etag_settled",
                        lambda *_: settles and time.monotonic() >= ready_at[0])
    events: list[str] = []
    real_served = pipeline._served

    def served(origin: Any, reader: Any, key: str, **kw: Any) -> Any:
        events.append(f"read {key.rsplit('/', 1)[-1]}")
        return real_served(origin, reader, key, **kw)
    monkeypatch.setattr(pipeline, "_served", served)

    def uploaded() -> None:  # settled from half a second on: the deferred look sees it
        ready_at[0] = time.monotonic() + 0.5

    target = nginx.root / "releases/r1/vmlinuz"

    def after() -> None:
        if case == "settles-then-changes":
            assert "read vmlinuz" in events  # the early read-back is done
            with open(target, "ab") as fh:
                fh.write(b"x")
    if case != "uploads-end-first":
        hold = pipeline.SETTLE_WAIT + 1.5
    else:  # a look that would come long after the uploads: nothing may wait for it
        monkeypatch.setattr(pipeline, "SETTLE_WAIT", 60.0)
        hold = 0.2
    sink = _SlowUploads("vmlinuz", hold, events, uploaded, after)
    rel = make_release({"boot.ipxe": ENTRY_B,
                        "vmlinuz": os.urandom(EARLY_READBACK_MIN + (1 << 20))})
    start = time.monotonic()
    with open_origin(nginx.url, options_of(pki)) as origin:
        def run() -> Any:
            return publish_release(origin, "r1", scan_directory(rel), entry="boot.ipxe",
                                   trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                                   progress=sink, options=options_of(pki))
        if case == "settles-then-changes":
            with pytest.raises(VerificationError, match="changed on"):
                run()
            return
        result = run()
    assert time.monotonic() - start < 30
    assert result.switched and "vmlinuz" in result.verified
    assert events.count("read vmlinuz") == 1, events  # read back once, early or late
    early = events.index("read vmlinuz") < events.index("phase readback")
    assert early is settles, events
