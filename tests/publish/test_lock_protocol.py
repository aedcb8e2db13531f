"""The lock protocol's parts over in-memory stores: lock.swap_record, the heartbeat's
compare-and-swap on a store whose only conditional is "move if the destination is absent"
(file://, WebDAV), and the heartbeat giving up. The backends' own tests (test_lock.py)
race real servers; these pin each branch."""

from __future__ import annotations

import json
import time

import pytest

from trustboot.errors import OperationalError
from trustboot.publish.lock import HeldLock, lock_record, swap_record


class Store:
    """Names to records; moves never overwrite."""

    def __init__(self, lock: dict[str, object] | None) -> None:
        self.objects: dict[str, bytes] = {}
        if lock is not None:
            self.objects["lock"] = json.dumps(lock).encode()
        self.fail_create = False

    def move(self, src: str, dst: str) -> bool:
        if src not in self.objects or dst in self.objects:
            return False
        self.objects[dst] = self.objects.pop(src)
        return True

    def swap(self, body: bytes) -> bool:
        def create(data: bytes) -> bool:
            if self.fail_create:
                raise OSError("the origin went away")
            if "lock" in self.objects:
                return False
            self.objects["lock"] = data
            return True

        return swap_record(
            body, take=lambda: "aside" if self.move("lock", "aside") else None,
            read=lambda name: json.loads(self.objects[name]),
            give_back=lambda name: self.move(name, "lock"),
            drop=lambda name: self.objects.pop(name, None), create=create)

    def record(self) -> object:
        return json.loads(self.objects["lock"]) if "lock" in self.objects else None


OURS = {"owner": "me", "token": "t1", "time": 1.0}
NEW = json.dumps({"owner": "me", "token": "t1", "time": 2.0}).encode()


def test_our_record_is_replaced_by_the_new_one() -> None:
    store = Store(OURS)
    assert store.swap(NEW) is True
    assert store.record() == json.loads(NEW) and set(store.objects) == {"lock"}


def test_another_holders_record_is_put_back_untouched() -> None:
    theirs = {"owner": "them", "token": "t2", "time": 5.0}
    store = Store(theirs)
    assert store.swap(NEW) is False
    assert store.record() == theirs and set(store.objects) == {"lock"}


def test_no_lock_is_not_created_by_a_refresh() -> None:
    store = Store(None)
    assert store.swap(NEW) is False
    assert store.objects == {}


def test_a_failed_create_gives_our_record_back() -> None:
    # the new record could not be written: the old one (ours) goes back in place rather
    # than leaving the lock absent for anyone to take while we still hold it
    store = Store(OURS)
    store.fail_create = True
    with pytest.raises(OSError, match="went away"):
        store.swap(NEW)
    assert store.record() == OURS and set(store.objects) == {"lock"}


def test_a_heartbeat_that_cannot_reach_the_origin_gives_the_lock_up() -> None:
    """Once others may judge the record stale (stale_after - refresh without a refresh),
    the holder must not go on: the next write raises."""
    def unreachable() -> object:
        raise OSError("no route to host")

    held = HeldLock("origin", lock_record("me", "t1"), stale_after=0.6, refresh=0.1,
                    read=unreachable, rewrite=lambda body: True)
    held.start()
    try:
        end = time.monotonic() + 5
        while held.lost is None and time.monotonic() < end:
            time.sleep(0.05)
        assert held.lost is not None and "could not be refreshed" in held.lost
        with pytest.raises(OperationalError, match="lost the lock on origin"):
            held.check()
    finally:
        held.stop()


def test_a_refused_rewrite_loses_the_lock_even_if_the_record_reads_as_ours() -> None:
    # the store refused the new record (S3: another ETag): the time in the store was not
    # renewed, so others will judge it stale; the holder cannot count on it any more
    record = lock_record("me", "t1")
    held = HeldLock("origin", record, stale_after=60.0, refresh=10.0,
                    read=lambda: dict(record), rewrite=lambda body: False)
    assert held.refresh() is False
    assert held.lost is not None
    with pytest.raises(OperationalError, match="lost the lock"):
        held.check()
