"""file:// origins, the key rule, the manifest, and the pipeline's refusals (no network)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Pki, ReleaseFactory
from trustboot.cli.main import cli
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish.fileorigin import FileOrigin
from trustboot.publish.manifest import (
    ManifestFile,
    ReleaseManifest,
    SignerSummary,
    parse_manifest,
)
from trustboot.publish.origin import (
    NotServed,
    OriginOptions,
    TooLarge,
    check_key,
    load_credentials,
    open_origin,
)
from trustboot.publish.webdav import parse_multistatus

ENTRY = b"#!ipxe\necho file origin\n"


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a/./b", ".", "..",
                                 "a//b", "a/", "a\\b", "a\x00b", "a\nb", "a b", "a;b",
                                 "${x}", "a?b", "a#b", "x" * 2000])
def test_hostile_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError):
        check_key(key)


def test_good_keys() -> None:
    for key in ("boot.ipxe", "releases/r1/vmlinuz.sig", "a/b-c_d.e~f+g=h,i@j"):
        assert check_key(key) == key


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_file_origin_objects(tmp_path: Path) -> None:
    with FileOrigin(f"file://{tmp_path}/o", OriginOptions()) as origin:
        origin.put_bytes("a/b/c", b"hello", sha256=_digest(b"hello"))
        st = origin.stat("a/b/c")
        assert st is not None and st.size == 5
        assert (tmp_path / "o/a/b/c").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "o/a/b").stat().st_mode & 0o777 == 0o755
        assert b"".join(origin.read("a/b/c", max_size=5)) == b"hello"
        with pytest.raises(TooLarge):
            b"".join(origin.read("a/b/c", max_size=4))
        origin.copy("a/b/c", "top")
        assert origin.list("") == ["a/b/c", "top"]
        assert origin.list("a/") == ["a/b/c"]
        with pytest.raises(OperationalError, match="changed"):
            origin.put_bytes("x", b"data", sha256=_digest(b"other"))
        assert origin.stat("x") is None and not any(
            p.name.startswith(".tb-tmp") for p in (tmp_path / "o").iterdir())
        origin.delete("a/b/c")
        origin.delete("a/b/c")  # missing is fine
        assert not (tmp_path / "o/a").exists()


def test_an_object_gone_since_its_stat_is_not_served(tmp_path: Path) -> None:
    """An object deleted between the stat that found it and its read (a release.json.sig
    removed meanwhile): NotServed, as an HTTP origin's 404, so the caller judges it
    (resign: that release's manifest unread) instead of failing as an I/O error (exit 1).
    Only a vanished object: one that is there but cannot be read as an object (a FIFO, a
    symbolic link) stays the origin's failure."""
    key = "releases/r1/release.json.sig"
    with FileOrigin(f"file://{tmp_path}/o", OriginOptions()) as origin:
        origin.put_bytes(key, b"sig", sha256=_digest(b"sig"))
        assert origin.stat(key) is not None
        (tmp_path / "o" / key).unlink()
        with pytest.raises(NotServed) as gone:
            b"".join(origin.read(key, max_size=1024))
        assert gone.value.status == 404 and key in gone.value.message
        with pytest.raises(NotServed):  # its folder gone as well
            (tmp_path / "o/releases/r1").rmdir()
            origin.read(key, max_size=1024)
        os.mkfifo(tmp_path / "o/releases/fifo")
        (tmp_path / "o/releases/link").symlink_to(tmp_path / "o/releases/fifo")
        for name in ("fifo", "link"):
            with pytest.raises(OperationalError) as failed:
                origin.read(f"releases/{name}", max_size=1024)
            assert not isinstance(failed.value, NotServed), name


def test_file_origin_modes_ignore_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        with FileOrigin(f"file://{tmp_path}/o", OriginOptions()) as origin:
            origin.put_bytes("d/f", b"x", sha256=_digest(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "o/d/f").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "o/d").stat().st_mode & 0o777 == 0o755


def test_symlink_planted_in_origin_cannot_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "o"
    root.mkdir()
    (root / "releases").symlink_to(outside)
    (root / "boot.ipxe").symlink_to(outside / "target")
    # a link to a file that exists: reading through it would serve (and publish's
    # read-back would vouch for) a file from outside the origin
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the origin")
    (root / "entry.ipxe").symlink_to(secret)
    with FileOrigin(f"file://{root}", OriginOptions()) as origin:
        with pytest.raises(OperationalError):
            list(origin.read("entry.ipxe", max_size=100))
        with pytest.raises(OperationalError, match="symbolic link"):
            origin.put_bytes("releases/r1/x", b"x", sha256=_digest(b"x"))
        with pytest.raises(OperationalError):
            origin.put_bytes("boot.ipxe/x", b"x", sha256=_digest(b"x"))
        with pytest.raises(OperationalError):
            list(origin.read("boot.ipxe", max_size=10))
        assert origin.list("") == []
        # replacing the link itself is allowed: rename swaps the name, never the target
        origin.put_bytes("boot.ipxe", b"y", sha256=_digest(b"y"))
    assert list(outside.iterdir()) == []
    assert not (root / "boot.ipxe").is_symlink()


def test_lock_is_exclusive_and_stale_locks_are_broken(tmp_path: Path) -> None:
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin:
        with origin.lock("first"):
            with pytest.raises(OperationalError, match="locked by first"):
                with origin.lock("second"):
                    pass
        # a lock left by a dead process on this host is stale
        (tmp_path / ".trustboot-publish.lock").write_text(json.dumps(
            {"owner": "dead", "host": os.uname().nodename, "pid": 2**22 + 12345,
             "time": 0}))
        with origin.lock("third"):
            assert "third" in (tmp_path / ".trustboot-publish.lock").read_text()
        assert not (tmp_path / ".trustboot-publish.lock").exists()


def test_a_fresh_lock_of_another_host_is_not_broken_for_its_pid(tmp_path: Path) -> None:
    """A pid means something only on the host that wrote it: a fresh lock of another
    host (an origin shared over NFS) whose pid no process has here is held, not stale."""
    lock = tmp_path / ".trustboot-publish.lock"
    lock.write_text(json.dumps({"owner": "elsewhere", "host": "another-host." + os.uname().nodename,
                                "pid": 2**22 + 12345, "time": time.time()}))
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin:
        with pytest.raises(OperationalError, match="locked by elsewhere"):
            with origin.lock("second"):
                pass
    assert "elsewhere" in lock.read_text()


def test_a_lock_of_a_live_process_of_another_user_is_not_stale() -> None:
    """Another user's live process cannot be signalled (EPERM): it is alive, so its lock
    holds. Judged by a child running as nobody about a lock of this (root) process."""
    from tests.conftest import require_root
    from trustboot.publish.lock import lock_is_stale

    require_root()
    record = {"owner": "root", "host": os.uname().nodename, "pid": os.getpid(),
              "time": time.time()}
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status only
        try:
            os.setgid(65534)
            os.setuid(65534)
            os._exit(0 if not lock_is_stale(record, now=time.time(), stale_after=3600.0)
                     else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "a live process of another user was " \
        "judged dead (1), or the check failed (2)"


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory"])
def test_a_planted_lock_is_neither_followed_nor_waited_on(tmp_path: Path,
                                                         planted: str) -> None:
    """Someone who can write the origin directory puts a link or a FIFO where the lock
    goes: the link was followed into a crash (exit 70), the FIFO hung the publish for
    good. Neither is a lock trustboot writes: it is moved aside and the lock taken."""
    lock = tmp_path / ".trustboot-publish.lock"
    target = tmp_path / "elsewhere"
    target.write_text("not a lock")
    if planted == "symlink":
        lock.symlink_to(target)
    elif planted == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    result: list[object] = []

    def take() -> None:
        try:
            with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin, \
                    origin.lock("me"):
                result.append(json.loads(lock.read_text())["owner"])
        except BaseException as exc:  # handed to the test
            result.append(exc)

    worker = threading.Thread(target=take, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the lock waited on a FIFO"
    assert result == ["me"]
    assert target.read_text() == "not a lock"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]


@pytest.mark.parametrize("when", ["Infinity", "NaN", "1e400"])
def test_a_lock_record_with_a_time_that_is_no_number_is_stale(tmp_path: Path,
                                                              when: str) -> None:
    """JSON's Infinity/NaN (which Python's parser accepts) in a planted lock's time ended
    the run in an internal error (exit 70) while it was described; such a record is not
    one trustboot writes: judged like an unreadable one."""
    lock = tmp_path / ".trustboot-publish.lock"
    lock.write_text('{"owner": "x", "host": "elsewhere", "pid": 1, "time": ' + when + "}")
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin, origin.lock("me"):
        assert json.loads(lock.read_text())["owner"] == "me"


@pytest.mark.parametrize("when", ["true", "false", '"0"', "null"])
def test_a_lock_record_whose_time_is_no_number_has_no_age(when: str) -> None:
    """true is no time (not 1970, which would make a fresh lock of another host stale
    at once): such a record is judged like one without a time, by its host and pid."""
    from trustboot.publish.lock import lock_is_stale

    record = json.loads('{"owner": "x", "host": "elsewhere", "pid": 1, "time": ' + when + "}")
    assert not lock_is_stale(record, now=time.time(), stale_after=60.0)


BIG = "1" + "0" * 400  # an integer JSON allows and no float holds


@pytest.mark.parametrize("field", ["time", "pid"])
def test_a_lock_record_with_numbers_beyond_range_is_no_internal_error(
        tmp_path: Path, field: str) -> None:
    """Another publisher of the origin (or the origin itself) writes a record with an
    integer time no float holds, or a pid of this host's name beyond any pid: judging or
    describing it raised OverflowError (exit 70). A time like that is no time trustboot
    writes (unreadable: stale); a pid like that is no process here (judged by time)."""
    import socket
    lock = tmp_path / ".trustboot-publish.lock"
    record = {"time": f'"owner": "x", "host": "elsewhere", "pid": 1, "time": {BIG}',
              "pid": f'"owner": "x", "host": "{socket.gethostname()}", "pid": {BIG}, '
                     f'"time": {time.time()}'}[field]
    lock.write_text("{" + record + "}")
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin:
        if field == "time":
            with origin.lock("me"):
                assert json.loads(lock.read_text())["owner"] == "me"
        else:
            with pytest.raises(OperationalError, match=r"locked by x \(pid 1000"), \
                    origin.lock("me"):
                pass


def test_a_holder_whose_lock_is_replaced_by_a_crafted_record_learns_it(
        tmp_path: Path) -> None:
    """The heartbeat describes whoever holds the lock now; a record whose time is beyond
    a float killed the heartbeat thread with OverflowError before it marked the lock lost,
    and the holder went on writing (no heartbeat, lock never lost) until its switch."""
    lock = tmp_path / ".trustboot-publish.lock"
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin, \
            origin.lock("me", stale_after=5, refresh=0.1) as held:
        lock.write_text('{"owner": "x", "host": "elsewhere", "pid": 1, "token": "t", '
                        f'"time": {BIG}}}')
        deadline = time.monotonic() + 10
        while held.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.lost is not None and "x (pid 1 on elsewhere)" in held.lost
        with pytest.raises(OperationalError, match="lost the lock"):
            origin.put_bytes("releases/r/x", b"x", sha256=hashlib.sha256(b"x").hexdigest())


def test_a_holder_whose_heartbeat_died_stops_writing(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever kills the heartbeat thread (a bug, as the OverflowError above was), the
    record stops being refreshed and others will judge it stale: the holder's next write
    is refused, not made under a lock nobody keeps."""
    import trustboot.publish.lock as lockmod

    def bug(_record: object) -> str:
        raise RuntimeError("a bug in the heartbeat")

    monkeypatch.setattr(lockmod, "describe_lock", bug)
    monkeypatch.setattr("threading.excepthook", lambda _args: None)
    lock = tmp_path / ".trustboot-publish.lock"
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin, \
            origin.lock("me", stale_after=60, refresh=0.1) as held:
        lock.write_text('{"owner": "x", "host": "elsewhere", "pid": 1, "token": "t"}')
        time.sleep(1.0)
        with pytest.raises(OperationalError, match="heartbeat stopped"):
            origin.put_bytes("releases/r/x", b"x", sha256=hashlib.sha256(b"x").hexdigest())
        assert held.lost == "its heartbeat stopped"
    assert not (tmp_path / "releases" / "r" / "x").exists()


def test_origin_registry(tmp_path: Path) -> None:
    assert isinstance(open_origin(f"file://{tmp_path}", OriginOptions()), FileOrigin)
    with pytest.raises(ConfigError, match="plain HTTP"):
        open_origin("http://example.net/", OriginOptions())
    with pytest.raises(ConfigError, match="scheme"):
        open_origin("ftp://example.net/", OriginOptions())
    with pytest.raises(ConfigError):
        open_origin("file://relative", OriginOptions())


def test_credentials_never_from_argv(tmp_path: Path) -> None:
    f = tmp_path / "creds"
    f.write_text("alice:s3cret\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="other users"):
        load_credentials(file=f)
    f.chmod(0o600)
    c = load_credentials(file=f)
    assert c is not None and c.username == "alice" and c.secret == "s3cret"
    assert "s3cret" not in repr(c)
    b = load_credentials(env="TB_TOKEN", environ={"TB_TOKEN": "bearer:abc"})
    assert b is not None and b.scheme == "bearer" and b.secret == "abc"
    with pytest.raises(ConfigError, match="not set"):
        load_credentials(env="TB_MISSING", environ={})


def test_manifest_round_trip_and_strictness() -> None:
    m = ReleaseManifest(release="r1", created=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                        files=(ManifestFile("a", 1, "0" * 64, "a.sig"),
                               ManifestFile("a.sig", 2, "1" * 64)), entry="a")
    assert parse_manifest(m.to_bytes()) == m
    data = json.loads(m.to_bytes())
    for bad in ({"extra": 1}, {"release": "../x"}, {"version": 2},
                {"files": [{"name": "../a", "size": 1, "sha256": "0" * 64}]},
                {"files": [{"name": "a", "size": -1, "sha256": "0" * 64}]},
                {"entry": "missing"}, {"created": "yesterday"}):
        with pytest.raises(ConfigError):
            parse_manifest(json.dumps(data | bad).encode())


def test_manifest_text_shown_to_operators_carries_no_terminal_escapes(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """`publish list` shows each release's signer from its manifest, which whoever can
    write the origin can plant: control and format characters there make it unreadable."""
    m = ReleaseManifest(release="r2", created=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                        files=(ManifestFile("a", 1, "0" * 64),), entry="a",
                        signer=SignerSummary("CN=boot", "1f",
                                             dt.datetime(2027, 1, 1, tzinfo=dt.UTC)))
    doc = json.loads(m.to_bytes())
    doc["signer"]["subject"] = "CN=boot\x1b]0;owned\x07"
    hostile = json.dumps(doc).encode()
    with pytest.raises(ConfigError, match="control or format"):
        parse_manifest(hostile)
    for origin in ("https://boot.example.net/\x9b31m", "https://boot.example.net/\u202e"):
        with pytest.raises(ConfigError, match="origin"):
            parse_manifest(json.dumps(json.loads(m.to_bytes()) | {"origin": origin}).encode())
    srv = tmp_path / "srv"
    assert _publish(pki, make_release({"boot.ipxe": ENTRY}), f"file://{srv}", "r1"
                    ).exit_code == 0
    planted = srv / "releases" / "r2"
    planted.mkdir()
    (planted / "release.json").write_bytes(hostile)
    res = CliRunner().invoke(cli, ["publish", "list", f"file://{srv}"])
    assert res.exit_code == 0, res.output
    assert "r2" in res.output and "\x1b" not in res.output and "\x07" not in res.output


def test_propfind_with_a_dtd_is_refused() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
            b'<multistatus xmlns="DAV:"><response><href>&b;</href></response></multistatus>')
    with pytest.raises(OperationalError, match="DTD"):
        parse_multistatus(bomb)
    with pytest.raises(OperationalError, match="UTF-8"):
        parse_multistatus(bomb.decode().encode("utf-16"))


def _publish(pki: Pki, directory: Path, origin: str, release: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["publish", str(directory), origin, "--release-id",
                                    release, "--pki", str(pki.dir), "--json", *extra])


def test_file_origin_publish_and_refusals(pki: Pki, make_release: ReleaseFactory,
                                          tmp_path: Path) -> None:
    origin = f"file://{tmp_path}/srv"
    r1 = make_release({"boot.ipxe": ENTRY, "sub/initrd.img": b"initrd" * 100})
    res = _publish(pki, r1, origin, "r1")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["readback"] == "backend" and out["switched"]
    assert (tmp_path / "srv/boot.ipxe").read_bytes() == ENTRY
    manifest = parse_manifest((tmp_path / "srv/releases/r1/release.json").read_bytes())
    assert manifest.entry == "boot.ipxe" and manifest.signer is not None
    assert {f.name for f in manifest.files} == {"boot.ipxe", "boot.ipxe.sig",
                                                "sub/initrd.img", "sub/initrd.img.sig"}
    # the same id with other content is refused (exit 3), nothing changes
    r1b = make_release({"boot.ipxe": ENTRY + b"echo changed\n"})
    res = _publish(pki, r1b, origin, "r1")
    assert res.exit_code == 3, res.output
    assert "already exists" in res.output
    assert (tmp_path / "srv/boot.ipxe").read_bytes() == ENTRY
    # bad release ids
    for bad in ("../x", "-r", "a/b", ""):
        res = _publish(pki, r1, origin, bad)
        assert res.exit_code in (2, 3), (bad, res.output)


def test_previous_live_when_releases_share_the_entry(pki: Pki, make_release: ReleaseFactory,
                                                      tmp_path: Path) -> None:
    """The same boot.ipxe signed again by the same RSA key is byte-identical, .sig too:
    publishing r2 after r1 said 'switched to r2 (was r2)'; it was r1."""
    origin = f"file://{tmp_path}/srv"
    r1 = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"one" * 100})
    r2 = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"two" * 100})
    assert (r1 / "boot.ipxe.sig").read_bytes() == (r2 / "boot.ipxe.sig").read_bytes()
    assert _publish(pki, r1, origin, "r1").exit_code == 0
    second = _publish(pki, r2, origin, "r2")
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["previous_live"] == "r1"
    back = CliRunner().invoke(cli, ["publish", "rollback", origin, "r1", "--pki", str(pki.dir),
                                    "--json"])
    assert back.exit_code == 0, back.output
    assert json.loads(back.output)["previous_live"] == "r2"


def test_a_rollback_to_a_release_missing_an_object_is_refused_as_not_served(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """An object of r1 deleted on a file:// origin: the rollback's read-back of it was an
    I/O failure (exit 1, no hint), where an HTTPS origin's 404 is the release not served
    as published. The same now: exit 4 (served-object) naming the object and the way
    out, nothing switched."""
    root = tmp_path / "srv"
    origin = f"file://{root}"
    for rid, body in (("r1", b"one"), ("r2", b"two")):
        done = _publish(pki, make_release({"boot.ipxe": ENTRY + body, "vmlinuz": body * 100}),
                        origin, rid)
        assert done.exit_code == 0, done.output
    (root / "releases/r1/vmlinuz").unlink()
    live = (root / "boot.ipxe").read_bytes()
    back = CliRunner().invoke(cli, ["publish", "rollback", origin, "r1", "--pki", str(pki.dir),
                                    "--json"])
    assert back.exit_code == 4, back.output
    err = json.loads(back.stderr)
    assert err["rule"] == "served-object", err
    assert "releases/r1/vmlinuz does not exist on the origin" in err["message"], err
    assert "nothing was switched" in err["hint"], err
    assert (root / "boot.ipxe").read_bytes() == live


def _stamps(root: Path) -> dict[str, int]:
    """Each file at the origin root (the entry pair and the records) and its mtime."""
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.is_file()}


def test_republishing_the_live_release_switches_nothing(pki: Pki, make_release: ReleaseFactory,
                                                        tmp_path: Path) -> None:
    """Publishing (or rolling back to) the release the entry already serves reported
    `switched: true` (and "switched boot.ipxe to r1 (was r1)") and copied the entry pair
    again: nothing changed, and the output must say so."""
    root = tmp_path / "srv"
    origin = f"file://{root}"
    r1 = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"one" * 100})
    first = _publish(pki, r1, origin, "r1")
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["switched"]
    before = _stamps(root)
    time.sleep(0.01)  # a rewrite would get another mtime
    again = _publish(pki, r1, origin, "r1")
    assert again.exit_code == 0, again.output
    out = json.loads(again.output)
    assert out["switched"] is False and out["previous_live"] == "r1", out
    assert out["uploaded"] == [] and len(out["verified"]) == 4, out
    assert _stamps(root) == before  # neither the entry pair nor a record was written
    text = CliRunner().invoke(cli, ["publish", str(r1), origin, "--release-id", "r1",
                                    "--pki", str(pki.dir)])
    assert text.exit_code == 0, text.output
    assert "boot.ipxe already serves r1 (verified): nothing switched" in text.output
    assert "switched boot.ipxe to" not in text.output
    back = CliRunner().invoke(cli, ["publish", "rollback", origin, "r1", "--pki", str(pki.dir),
                                    "--json"])
    assert back.exit_code == 0, back.output
    assert json.loads(back.output)["switched"] is False
    assert _stamps(root) == before

    # a pair that no longer verifies (its signature replaced) is switched again, as is
    # another release
    (root / "boot.ipxe.sig").write_bytes(b"not a signature")
    fixed = _publish(pki, r1, origin, "r1")
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.output)["switched"] is True
    assert (root / "boot.ipxe.sig").read_bytes() == (r1 / "boot.ipxe.sig").read_bytes()
    r2 = make_release({"boot.ipxe": ENTRY + b"echo two\n"})
    second = _publish(pki, r2, origin, "r2")
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["switched"] is True
    back = CliRunner().invoke(cli, ["publish", "rollback", origin, "r1", "--pki", str(pki.dir)])
    assert back.exit_code == 0, back.output
    assert "switched boot.ipxe to r1 (was r2)" in back.output


def test_unsigned_or_badly_signed_release_is_refused_before_upload(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    origin = tmp_path / "srv"
    r = make_release({"boot.ipxe": ENTRY})
    (r / "unsigned.bin").write_bytes(b"x")
    res = _publish(pki, r, f"file://{origin}", "r1")
    assert res.exit_code == 3 and "no signature for unsigned.bin" in res.output
    (r / "unsigned.bin").unlink()
    (r / "boot.ipxe").write_bytes(ENTRY + b"echo tampered\n")
    res = _publish(pki, r, f"file://{origin}", "r1")
    assert res.exit_code == 4, res.output
    assert not (origin / "releases").exists()
    # a symlink in the release directory is refused
    r2 = make_release({"boot.ipxe": ENTRY})
    (r2 / "link").symlink_to("/etc/passwd")
    res = _publish(pki, r2, f"file://{origin}", "r2")
    assert res.exit_code == 3 and "not a regular file" in res.output


def test_wrong_signer_name_is_exit_4(pki: Pki, make_release: ReleaseFactory,
                                     tmp_path: Path) -> None:
    r = make_release({"boot.ipxe": ENTRY}, signer="other-signer")
    res = _publish(pki, r, f"file://{tmp_path}/srv", "r1", "--signer", "boot-signer")
    assert res.exit_code == 4, res.output


def test_locked_origin_fails_clearly(pki: Pki, make_release: ReleaseFactory,
                                     tmp_path: Path) -> None:
    r = make_release({"boot.ipxe": ENTRY})
    with FileOrigin(f"file://{tmp_path}/srv", OriginOptions()) as origin, \
            origin.lock("the other publish"):
        res = _publish(pki, r, f"file://{tmp_path}/srv", "r1")
    assert res.exit_code == 1
    assert "locked by the other publish" in res.output


def test_tamper_on_file_origin_is_caught(pki: Pki, make_release: ReleaseFactory,
                                         tmp_path: Path) -> None:
    origin = f"file://{tmp_path}/srv"
    r = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"k" * 4096})
    assert _publish(pki, r, origin, "r1", "--no-switch").exit_code == 0
    target = tmp_path / "srv/releases/r1/vmlinuz"
    target.write_bytes(b"K" + b"k" * 4095)  # same size: a resume would skip it
    res = _publish(pki, r, origin, "r1")
    assert res.exit_code == 4, res.output
    assert "vmlinuz" in res.output
    assert not (tmp_path / "srv/boot.ipxe").exists()


def test_dot_files_in_a_release_are_refused(pki: Pki, make_release: ReleaseFactory,
                                            tmp_path: Path) -> None:
    r = make_release({"boot.ipxe": ENTRY, ".hidden": b"x"})
    res = _publish(pki, r, f"file://{tmp_path}/srv", "r1")
    assert res.exit_code == 3 and "hidden" in res.output, res.output


def test_prune_keeps_newest_and_live(pki: Pki, make_release: ReleaseFactory,
                                     tmp_path: Path) -> None:
    origin = f"file://{tmp_path}/srv"
    for i in range(1, 4):
        r = make_release({"boot.ipxe": ENTRY + f"echo {i}\n".encode(),
                          "sub/k": f"kernel {i}".encode()})
        assert _publish(pki, r, origin, f"r{i}").exit_code == 0
        time.sleep(1.1)  # distinct creation times
    res = CliRunner().invoke(cli, ["publish", "rollback", origin, "r1", "--pki",
                                   str(pki.dir)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["publish", "prune", origin, "--keep", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["deleted"] == ["r2"]
    assert sorted(p.name for p in (tmp_path / "srv/releases").iterdir()) == ["r1", "r3"]
    listed = json.loads(CliRunner().invoke(cli, ["publish", "list", origin, "--json"]).output)
    assert [(i["id"], i["live"], i["complete"]) for i in listed] == [
        ("r1", True, True), ("r3", False, True)]
    res = CliRunner().invoke(cli, ["publish", "prune", origin, "--keep", "0"])
    assert res.exit_code == 2


def test_only_publish_creates_a_file_origin_directory(pki: Pki, make_release: ReleaseFactory,
                                                      tmp_path: Path) -> None:
    """A mistyped file:// path: list, prune, rollback, repair and resign say it does not
    exist (exit 1) and leave no directory behind (they created it, and list said 'no
    releases'); the first publish creates it."""
    missing = tmp_path / "typo" / "srv"
    origin = f"file://{missing}"
    for args in (["publish", "list", origin], ["publish", "prune", origin, "--keep", "1"],
                 ["publish", "rollback", origin, "r1"], ["publish", "repair", origin],
                 ["resign", origin, "--key", "boot-signer"]):
        result = CliRunner().invoke(cli, [*args, "--pki", str(pki.dir)])
        assert result.exit_code == 1, (args, result.output)
        assert f"origin directory {missing} does not exist" in result.stderr, args
        assert not (tmp_path / "typo").exists(), args
    res = _publish(pki, make_release({"boot.ipxe": ENTRY}), origin, "r1")
    assert res.exit_code == 0, res.output
    assert (missing / "releases" / "r1" / "boot.ipxe").is_file()


def test_prune_with_another_entry_path_than_the_origins_keeps_the_live_one(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """Prune told another entry path (the default boot.ipxe for an origin whose firmware
    fetches menu.ipxe) still keeps the release menu.ipxe serves; an entry path that serves
    something else than a release makes it refuse: what that boots cannot be told."""
    origin = f"file://{tmp_path}/srv"
    for i in (1, 2):
        r = make_release({"boot.ipxe": ENTRY + f"echo {i}\n".encode()})
        res = _publish(pki, r, origin, f"r{i}", "--entry-path", "menu.ipxe")
        assert res.exit_code == 0, res.output
        time.sleep(1.1)  # distinct creation times
    res = CliRunner().invoke(cli, ["publish", "rollback", origin, "r1", "--pki",
                                   str(pki.dir), "--entry-path", "menu.ipxe"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["publish", "prune", origin, "--keep", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["deleted"] == []  # r2 the newest, r1 live
    assert sorted(p.name for p in (tmp_path / "srv/releases").iterdir()) == ["r1", "r2"]
    (tmp_path / "srv/boot.ipxe").write_bytes(b"#!ipxe\nchain releases/r1/boot.ipxe\n")
    res = CliRunner().invoke(cli, ["publish", "prune", origin, "--keep", "1"])
    assert res.exit_code == 3, res.output
    assert "--entry-path" in res.output and "serves none of its releases" in res.output
    assert sorted(p.name for p in (tmp_path / "srv/releases").iterdir()) == ["r1", "r2"]


_HOLDER = """
import sys, time
from trustboot.publish.fileorigin import FileOrigin
from trustboot.publish.origin import OriginOptions
with FileOrigin(sys.argv[1], OriginOptions()) as o, o.lock("in a container"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""


def test_a_lock_held_in_another_pid_namespace_of_this_host_is_not_broken(
        tmp_path: Path) -> None:
    """A publisher in a container that shares this host's name (host networking) holds
    the lock with a pid of its own PID namespace, one no process has here: that pid says
    nothing about whether it is alive, so its lock is not taken for a dead process's."""
    import subprocess
    import sys

    from tests.conftest import require_root, require_tool

    require_root()
    require_tool("unshare", "util-linux")
    url = f"file://{tmp_path}"
    # a pid far above any in use here (set for the new namespace, which starts empty)
    script = ("echo 4190000 > /proc/sys/kernel/ns_last_pid && "
              '"$0" -c "$1" "$2"; true')
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script, sys.executable,
         _HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        record = json.loads((tmp_path / ".trustboot-publish.lock").read_text())
        assert record["pid"] > 4190000  # (no such process in this namespace)
        with pytest.raises(OperationalError, match="locked by in a container"):
            with FileOrigin(url, OriginOptions()) as o, o.lock("here"):
                pass
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert not (tmp_path / ".trustboot-publish.lock").exists()


def test_prune_keeps_the_release_another_entry_path_serves(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """Two recipes share an origin with their own entry paths (a production and a staging
    menu): pruning for one must not delete the release the other one serves."""
    origin = f"file://{tmp_path}/srv"
    r = make_release({"boot.ipxe": ENTRY + b"echo staging\n"})
    res = _publish(pki, r, origin, "staging1", "--entry-path", "test/staging.ipxe")
    assert res.exit_code == 0, res.output
    for i in (1, 2):
        time.sleep(1.1)  # distinct creation times
        r = make_release({"boot.ipxe": ENTRY + f"echo {i}\n".encode()})
        assert _publish(pki, r, origin, f"prod{i}").exit_code == 0
    res = CliRunner().invoke(cli, ["publish", "prune", origin, "--keep", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["deleted"] == ["prod1"]
    assert sorted(p.name for p in (tmp_path / "srv/releases").iterdir()) == [
        "prod2", "staging1"]


@pytest.mark.parametrize("entry", ["releases/live.ipxe", "releases", "releases/r1/boot.ipxe",
                                   ".trustboot-live.json", "menus/.hidden.ipxe"])
def test_an_entry_path_inside_releases_or_hidden_is_refused_everywhere(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, entry: str) -> None:
    """Everything under releases/ is read as releases' objects (prune, list): an entry pair
    there would not keep the release it serves. A dot-file is hidden by the origin and
    named like its own records. Each command refuses such an entry path (exit 3) before
    touching the origin."""
    origin = f"file://{tmp_path}/srv"
    release = make_release({"boot.ipxe": ENTRY})
    assert _publish(pki, release, origin, "r1").exit_code == 0
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for args in (["publish", str(release), origin, "--release-id", "r2"],
                 ["publish", "rollback", origin, "r1"],
                 ["publish", "prune", origin, "--keep", "1"],
                 ["resign", origin, "--key", "boot-signer"]):
        result = CliRunner().invoke(cli, [*args, "--pki", str(pki.dir), "--entry-path", entry])
        assert result.exit_code == 3, (args, result.output)
        assert f"entry path {entry!r} is refused" in result.output, args
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_prune_keeps_a_release_an_older_entry_pair_under_releases_serves(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """An origin switched before entry paths under releases/ were refused may still serve
    releases/live.ipxe: prune (for another entry path) keeps the release it serves."""
    origin = f"file://{tmp_path}/srv"
    for i in (1, 2):
        r = make_release({"boot.ipxe": ENTRY + f"echo {i}\n".encode()})
        assert _publish(pki, r, origin, f"r{i}").exit_code == 0
        time.sleep(1.1)  # distinct creation times
    srv = tmp_path / "srv"
    for name in ("boot.ipxe", "boot.ipxe.sig"):  # r1's pair, as an old switch left it
        (srv / "releases" / name.replace("boot", "live")).write_bytes(
            (srv / "releases/r1" / name).read_bytes())
    res = CliRunner().invoke(cli, ["publish", "prune", origin, "--keep", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["deleted"] == []
    assert (srv / "releases/r1/release.json").is_file()


@pytest.mark.parametrize("planted", ["fifo", "directory"])
def test_something_other_than_a_file_at_a_key_names_the_fix(tmp_path: Path,
                                                          planted: str) -> None:
    """A FIFO planted as .trustboot-live.json said "stat failed: not a regular file",
    no hint: only trustboot writes there, so whoever planted it must be found."""
    target = tmp_path / ".trustboot-live.json"
    if planted == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin:
        with pytest.raises(OperationalError) as exc:
            origin.stat(".trustboot-live.json")
    assert "not a regular file" in exc.value.message, exc.value.message
    assert exc.value.hint is not None and f"rm {target}" in exc.value.hint, exc.value.hint


_UNREADABLE_PROBE = """
import json, sys
from trustboot.errors import OperationalError
from trustboot.publish.fileorigin import FileOrigin
from trustboot.publish.origin import OriginOptions
said = {}
with FileOrigin(sys.argv[1], OriginOptions(create_root=False)) as origin:
    said["swept"] = origin.remove_stale_temps(0)
    try:
        said["listed"] = origin.list("releases/")
    except OperationalError as exc:
        said["error"] = str(exc)
print(json.dumps(said))
"""


def test_a_directory_the_publisher_cannot_read_is_an_operational_error(
        tmp_path: Path) -> None:
    """A directory in the tree that this user cannot open (made by the web server's user,
    say): the listing fails naming it (exit 1, not an internal error), and the sweep of
    our own leftovers passes it by instead of stopping every publish. Run without the
    capabilities that let root open any directory."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop root's DAC override")
    (tmp_path / "releases" / "r1").mkdir(parents=True)
    (tmp_path / "releases" / "r1" / ".tb-tmp.0123456789abcdef.x").write_bytes(b"left")
    shut = tmp_path / "releases" / "zz"
    shut.mkdir(mode=0o000)
    out = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
         sys.executable, "-c", _UNREADABLE_PROBE, f"file://{tmp_path}"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    said = json.loads(out.stdout)
    assert said["swept"] == ["releases/r1/.tb-tmp.0123456789abcdef.x"]
    assert "releases/zz: listing failed: Permission denied" in said["error"]


SHA_X = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("how", ["owned", "world-writable", "group-writable",
                                 "link", "subdirectory"])
def test_an_origin_directory_another_user_can_change_is_refused(
        tmp_path: Path, how: str) -> None:
    """The root (or a directory under it) of another user, writable by others, or reached
    through another user's link: they could replace what was verified after the read-back,
    or send the publish where they like. Refused before anything is written (exit 3);
    --unsafe-shared-origin allows it, with a warning."""
    from tests.conftest import dir_of_nobody, give_group_to_another_user

    root = tmp_path / "origin"
    url = f"file://{root}"
    if how == "owned":
        dir_of_nobody(root)
    elif how == "world-writable":
        root.mkdir()
        root.chmod(0o777)
    elif how == "group-writable":
        root.mkdir()
        root.chmod(0o775)
        give_group_to_another_user(root)
    elif how == "link":
        target = tmp_path / "elsewhere"
        target.mkdir()
        dir_of_nobody(tmp_path / "theirs")
        link = tmp_path / "theirs" / "origin"
        link.symlink_to(target)
        os.chown(link, 65534, 65534, follow_symlinks=False)
        url = f"file://{link}"
    else:
        root.mkdir()
        dir_of_nobody(root / "releases")
    with pytest.raises(ConfigError, match=r"other users|not by root or you|owned by uid"
                       ) as refused:
        with FileOrigin(url, OriginOptions()) as origin:
            origin.put_bytes("releases/r1/x", b"x", sha256=SHA_X)
    assert "--unsafe-shared-origin" in (refused.value.hint or "")  # the way, if on purpose
    assert not list(tmp_path.rglob("x"))
    with FileOrigin(url, OriginOptions(unsafe_shared_origin=True)) as origin:
        origin.put_bytes("releases/r1/x", b"x", sha256=SHA_X)


def test_publish_warns_when_a_shared_origin_is_allowed(pki: Pki, make_release: ReleaseFactory,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    rel = make_release({"boot.ipxe": ENTRY})
    refused = _publish(pki, rel, f"file://{root}", "r1")
    assert refused.exit_code == 3 and "chmod go-w" in refused.output, refused.output
    assert not (root / "releases").exists()
    allowed = _publish(pki, rel, f"file://{root}", "r1", "--unsafe-shared-origin")
    assert allowed.exit_code == 0, allowed.output
    assert "--unsafe-shared-origin: other users" in allowed.output


def test_a_parent_another_user_makes_while_the_origin_is_created_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parents were checked once, before make_dirs, which skips what does not exist
    yet and keeps a directory someone made meanwhile: another user who wins that race in
    a sticky directory (/tmp) owns a parent of the origin and can swap it after the
    read-back. They are checked again once everything exists."""
    from trustboot import fsutil

    if os.geteuid() != 0:
        pytest.skip("giving a directory to another uid needs root (CI runs as root)")
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    real = fsutil.make_dirs

    def racing(path: Path, mode: int = fsutil.PUBLIC_DIR_MODE) -> Path:
        theirs = sticky / "a"
        theirs.mkdir()
        theirs.chmod(0o777)
        os.chown(theirs, 65534, 65534)  # made by another user, just before ours
        return real(path, mode)

    monkeypatch.setattr(fsutil, "make_dirs", racing)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        with FileOrigin(f"file://{sticky}/a/b/origin", OriginOptions()):
            pass


@pytest.mark.parametrize("how", ["owned", "world-writable"])
def test_an_object_another_user_can_change_is_refused(tmp_path: Path, how: str) -> None:
    """An object left in the tree by another user (from when it was shared, say), or one
    others can write, is theirs to change after it was verified, and an object already
    there is not uploaded again: refused when it is read or judged (exit 3), allowed with
    --unsafe-shared-origin."""
    if how == "owned" and os.geteuid() != 0:
        pytest.skip("giving a file to another uid needs root (CI runs as root)")
    (tmp_path / "releases" / "r1").mkdir(parents=True)
    obj = tmp_path / "releases" / "r1" / "x"
    obj.write_bytes(b"x")
    if how == "owned":
        os.chown(obj, 65534, 65534)
    else:
        obj.chmod(0o666)
    with FileOrigin(f"file://{tmp_path}", OriginOptions(create_root=False)) as origin:
        with pytest.raises(ConfigError, match=r"owned by uid 65534|writable by other users"):
            origin.stat("releases/r1/x")
        with pytest.raises(ConfigError, match=r"owned by uid 65534|writable by other users"):
            b"".join(origin.read("releases/r1/x", max_size=10))
    with FileOrigin(f"file://{tmp_path}", OriginOptions(create_root=False,
                                                        unsafe_shared_origin=True)) as origin:
        assert origin.stat("releases/r1/x") is not None
