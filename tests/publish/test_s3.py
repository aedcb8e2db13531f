"""S3Origin against a real Ceph RGW (real SigV4, real TLS with a trustboot test CA)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")

import botocore.exceptions

from tests.publish.conftest import no_ambient_aws
from tests.publish.rgw import RGW, anon_get, rgw  # noqa: F401  (the session fixture)
from trustboot.ca.store import CertificateAuthority
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.publish.fileorigin import LOCK_NAME
from trustboot.publish.origin import Credentials, OriginOptions, TooLarge, open_origin
from trustboot.publish.s3 import S3Origin
from trustboot.secrets import constant

_COUNTER = iter(range(10_000))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3(rgw: RGW) -> Any:  # noqa: F811
    return rgw.client()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"tb-{os.getpid()}-{next(_COUNTER)}"
    s3.create_bucket(Bucket=name)
    return name


def opts(rgw: RGW, **kw: Any) -> OriginOptions:  # noqa: F811
    base: dict[str, Any] = {
        "ca_file": rgw.ca_file, "endpoint_url": rgw.endpoint, "timeout": 10.0, "retries": 1,
        "credentials": Credentials("basic", rgw.secret_key, username=rgw.access_key,
                                   source="test")}
    base.update(kw)
    return OriginOptions(**base)


# -- objects --------------------------------------------------------------------------

def test_put_stat_read_list_delete(rgw: RGW, s3: Any, bucket: str,  # noqa: F811
                                   tmp_path: Path) -> None:
    f = tmp_path / "vmlinuz"
    f.write_bytes(os.urandom(300_000))
    data = f.read_bytes()
    # a key just outside the prefix must not show up (prefix 'prod' vs 'prod2/...')
    s3.put_object(Bucket=bucket, Key="prod2/releases/r1/x", Body=b"other")
    with open_origin(f"s3://{bucket}/prod", opts(rgw)) as o:
        assert isinstance(o, S3Origin) and o.url == f"s3://{bucket}/prod/"
        assert o.stat("releases/r1/vmlinuz") is None
        seen: list[int] = []
        o.put_file("releases/r1/vmlinuz", f, size=len(data), sha256=sha(data),
                   progress=seen.append)
        assert sum(seen) == len(data)
        o.put_bytes("releases/r1/boot.ipxe", b"#!ipxe\n", sha256=sha(b"#!ipxe\n"))
        st = o.stat("releases/r1/vmlinuz")
        assert st is not None and st.size == len(data) and st.sha256 == sha(data)
        assert b"".join(o.read("releases/r1/vmlinuz", max_size=len(data))) == data
        with pytest.raises(TooLarge, match="larger than"):
            b"".join(o.read("releases/r1/vmlinuz", max_size=len(data) - 1))
        with pytest.raises(OperationalError, match="does not exist"):
            o.read("releases/r1/missing", max_size=10)
        assert o.list("") == ["releases/r1/boot.ipxe", "releases/r1/vmlinuz"]
        assert o.list("releases/r1/") == ["releases/r1/boot.ipxe", "releases/r1/vmlinuz"]
        assert o.list("releases/r2/") == []
        # the objects really are under the prefix in the bucket
        head = s3.head_object(Bucket=bucket, Key="prod/releases/r1/vmlinuz")
        assert head["Metadata"]["sha256"] == sha(data)
        o.delete("releases/r1/vmlinuz")
        o.delete("releases/r1/vmlinuz")  # missing is not an error
        assert o.list("") == ["releases/r1/boot.ipxe"]
    # put_bytes refuses a digest that does not match (a caller bug, not a store problem)
    with open_origin(f"s3://{bucket}/prod", opts(rgw)) as o, \
            pytest.raises(ValueError, match="sha256"):
        o.put_bytes("x", b"a", sha256=sha(b"b"))


def test_objects_are_anonymously_readable_and_copy_switches(rgw: RGW, bucket: str,  # noqa: F811
                                                            ) -> None:
    with open_origin(f"s3://{bucket}/site", opts(rgw)) as o:
        for rel, text in (("r1", b"#!ipxe\necho one\n"), ("r2", b"#!ipxe\necho two\n")):
            o.put_bytes(f"releases/{rel}/boot.ipxe", text, sha256=sha(text))
        o.copy("releases/r1/boot.ipxe", "boot.ipxe")
        url = o.public_url("boot.ipxe")
        assert url == f"{rgw.endpoint}/{bucket}/site/boot.ipxe"
        status, headers, body = anon_get(url, rgw.ca_file)
        assert (status, body) == (200, b"#!ipxe\necho one\n")
        assert headers["Cache-Control"] == "no-cache"  # the switched entry is not cached
        o.copy("releases/r2/boot.ipxe", "boot.ipxe")  # replaces
        assert anon_get(url, rgw.ca_file)[2] == b"#!ipxe\necho two\n"
        st = o.stat("boot.ipxe")
        assert st is not None and st.sha256 == sha(b"#!ipxe\necho two\n")
        with pytest.raises(OperationalError, match="does not exist"):
            o.copy("releases/r3/boot.ipxe", "boot.ipxe")
        release_url = o.public_url("releases/r1/boot.ipxe")
        assert release_url is not None
        assert anon_get(release_url, rgw.ca_file)[0] == 200
    # public_read=False: the store keeps objects private (a bucket policy/CDN must serve)
    with S3Origin(f"s3://{bucket}/private", opts(rgw), public_read=False) as p:
        p.put_bytes("a.txt", b"secret", sha256=sha(b"secret"))
        assert p.public_url("a.txt") is None  # the read-back goes through the store
        url = f"{rgw.endpoint}/{bucket}/private/a.txt"
        assert anon_get(url, rgw.ca_file)[0] == 403
    # an explicit public base URL (a CDN in front) wins, with the key appended
    with S3Origin(f"s3://{bucket}/site", opts(rgw, public_url="https://cdn.example.net/b/")) as c:
        assert c.public_url("releases/r1/a+b.efi") == \
            "https://cdn.example.net/b/releases/r1/a%2Bb.efi"


def test_multipart_upload_streams_from_the_file(rgw: RGW, s3: Any, bucket: str,  # noqa: F811
                                                tmp_path: Path) -> None:
    f = tmp_path / "initrd"
    f.write_bytes(os.urandom(5 << 20) * 2 + os.urandom(1 << 20))  # 11 MiB: three parts
    data = f.read_bytes()
    seen: list[int] = []
    with S3Origin(f"s3://{bucket}/mp", opts(rgw), multipart_threshold=6 << 20,
                  part_size=5 << 20) as o:
        o.put_file("releases/r1/initrd", f, size=len(data), sha256=sha(data),
                   progress=seen.append)
        assert sum(seen) == len(data)
        st = o.stat("releases/r1/initrd")
        assert st is not None and st.sha256 == sha(data) and st.size == len(data)
        assert st.etag is not None and st.etag.endswith("-3")  # really three parts
        assert sha(b"".join(o.read("releases/r1/initrd", max_size=len(data)))) == sha(data)
        # the size it was hashed at must be the size sent: a changed file is refused
        with pytest.raises(OperationalError, match="not the"):
            o.put_file("releases/r1/other", f, size=len(data) - 1, sha256=sha(data))
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_non_regular_and_linked_files_are_refused(rgw: RGW, bucket: str,  # noqa: F811
                                                  tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "t"
    target.write_bytes(b"x")
    (tmp_path / "link").symlink_to(target)
    with open_origin(f"s3://{bucket}/x", opts(rgw)) as o:
        with pytest.raises(OperationalError, match="not a regular file"):
            o.put_file("a", fifo, size=0, sha256=sha(b""))
        with pytest.raises(OperationalError, match="cannot read"):
            o.put_file("a", tmp_path / "link", size=1, sha256=sha(b"x"))
        assert o.list("") == []


# -- credentials and errors -----------------------------------------------------------

def test_wrong_secret_key_fails_with_real_sigv4(rgw: RGW, bucket: str) -> None:  # noqa: F811
    bad = Credentials("basic", rgw.secret_key[:-1] + ("x" if rgw.secret_key[-1] != "x"
                                                      else "y"),
                      username=rgw.access_key, source="test")
    with open_origin(f"s3://{bucket}/p", opts(rgw, credentials=bad)) as o:
        with pytest.raises(OperationalError, match="SignatureDoesNotMatch") as e:
            o.put_bytes("a", b"a", sha256=sha(b"a"))
        assert e.value.hint and "secret" in e.value.hint.lower()
        with pytest.raises(OperationalError, match="SignatureDoesNotMatch"):
            o.list("")
    unknown = Credentials("basic", "whatever", username="AKIDNOTKNOWNHERE0000", source="t")
    with open_origin(f"s3://{bucket}/p", opts(rgw, credentials=unknown)) as o:
        with pytest.raises(OperationalError, match="InvalidAccessKeyId"):
            o.list("")
        with pytest.raises(OperationalError, match="access denied") as e:
            o.stat("a")  # HEAD: no error body, still a clear refusal
        assert e.value.hint and "access key and secret" in e.value.hint
    bearer = Credentials("bearer", "tok", source="test")
    with pytest.raises(ConfigError, match="ACCESS_KEY_ID:SECRET"), \
            open_origin(f"s3://{bucket}/p", opts(rgw, credentials=bearer)):
        pass


def test_usual_credential_chain_env_and_profile(rgw: RGW, bucket: str, tmp_path: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    no_ambient_aws(monkeypatch, tmp_path)
    # nothing configured: a clear configuration error, not a traceback
    with open_origin(f"s3://{bucket}/p", opts(rgw, credentials=None)) as o, \
            pytest.raises(ConfigError, match="no S3 credentials"):
        o.stat("a")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw.secret_key)
    with open_origin(f"s3://{bucket}/p", opts(rgw, credentials=None)) as o:
        o.put_bytes("env", b"1", sha256=sha(b"1"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "credentials"
    creds.write_text(f"[boot]\naws_access_key_id = {rgw.access_key}\n"
                     f"aws_secret_access_key = {rgw.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "boot")
    with open_origin(f"s3://{bucket}/p", opts(rgw, credentials=None)) as o:
        assert o.list("") == ["env"]


def test_missing_bucket_names_it_with_a_hint(rgw: RGW) -> None:  # noqa: F811
    with open_origin("s3://no-such-bucket-here/p", opts(rgw)) as o:
        with pytest.raises(OperationalError, match="'no-such-bucket-here' does not exist") as e:
            o.put_bytes("a", b"a", sha256=sha(b"a"))
        assert e.value.hint and "create it" in e.value.hint
        with pytest.raises(OperationalError, match="does not exist"):
            o.list("")


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_tls_is_verified_against_the_given_ca(rgw: RGW, bucket: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    other, _ = CertificateAuthority.init(tmp_path / "other", constant(b"another passphrase"),
                                         key_type="ec-p256")
    with open_origin(f"s3://{bucket}/p", opts(rgw, ca_file=other.path / "ca.crt")) as o, \
            pytest.raises(VerificationError, match="does not verify") as e:
        o.stat("a")
    assert e.value.rule == "origin-tls" and e.value.hint
    # no CA at all: refused up front, never the system store in its place
    with pytest.raises(ConfigError, match="no CA"), \
            open_origin(f"s3://{bucket}/p", opts(rgw, ca_file=None)):
        pass
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the origin CA"), \
            open_origin(f"s3://{bucket}/p", opts(rgw, ca_file=junk)):
        pass
    with pytest.raises(ConfigError, match="client certificates are not supported"), \
            open_origin(f"s3://{bucket}/p", opts(rgw, client_cert=junk)):
        pass
    with open_origin(f"s3://{bucket}/p", opts(rgw, ca_file=None, unsafe_no_verify=True)) as o:
        assert o.stat("a") is None  # only with the explicit unsafe flag


def test_plain_http_endpoint_only_with_the_unsafe_flag(rgw: RGW, bucket: str,  # noqa: F811
                                                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain HTTP"):
        open_origin(f"s3://{bucket}/p", opts(rgw, endpoint_url=rgw.http_endpoint))
    with open_origin(f"s3://{bucket}/p", opts(rgw, endpoint_url=rgw.http_endpoint,
                                              unsafe_http=True)) as o:
        o.put_bytes("h", b"h", sha256=sha(b"h"))
        # over plain HTTP botocore reads the body once to sign it, then rewinds to send
        f = tmp_path / "f"
        f.write_bytes(os.urandom(100_000))
        o.put_file("f", f, size=100_000, sha256=sha(f.read_bytes()))
        assert o.list("") == ["f", "h"]


# -- hostile names ------------------------------------------------------------------

HOSTILE = ["../escape", "/abs", "a//b", "a/./b", "a/../../b", "a\\b", "", "a\x00b",
           "a\nb", "a b", "a/", "x;y", "${x}"]


def test_hostile_keys_are_refused_everywhere(rgw: RGW, bucket: str) -> None:  # noqa: F811
    with open_origin(f"s3://{bucket}/p", opts(rgw)) as o:
        o.put_bytes("ok", b"ok", sha256=sha(b"ok"))
        for key in HOSTILE:
            calls: dict[str, Callable[[str], object]] = {
                "put_bytes": lambda k: o.put_bytes(k, b"x", sha256=sha(b"x")),
                "stat": lambda k: o.stat(k),
                "read": lambda k: o.read(k, max_size=1),
                "delete": lambda k: o.delete(k),
                "copy to": lambda k: o.copy("ok", k),
                "copy from": lambda k: o.copy(k, "ok"),
                "public_url": lambda k: o.public_url(k),
            }
            for name, call in calls.items():
                with pytest.raises(ConfigError, match="refused"):
                    call(key)
                    pytest.fail(f"{name}({key!r}) was accepted")
        for prefix in ("../", "/", "a/../../"):
            with pytest.raises(ConfigError, match="refused"):
                o.list(prefix)
        assert o.list("") == ["ok"]


@pytest.mark.parametrize("url", [
    "s3://user:pw@bucket/p", "s3://bucket:443/p", "s3://Bucket/p", "s3://b/p",
    "s3://bucket/../p", "s3://bucket/p?x=1", "s3://bucket/a//b", "s3://bucket/p#f",
    "s3://bu..cket/p"])
def test_hostile_origin_urls_are_refused(rgw: RGW, url: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError):
        open_origin(url, opts(rgw))


@pytest.mark.parametrize("endpoint", [
    "ftp://127.0.0.1", "https://user:pw@127.0.0.1:1", "https://127.0.0.1/path",
    "https://127.0.0.1/?q", "https://"])
def test_bad_endpoints_are_refused(rgw: RGW, endpoint: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError):
        open_origin("s3://bucket/p", opts(rgw, endpoint_url=endpoint))


def test_foreign_keys_in_the_bucket_are_not_listed(rgw: RGW, s3: Any,  # noqa: F811
                                                   bucket: str) -> None:
    for key in ("p/releases/r1/ok", "p/releases/r1/a b", "p/releases/../../x",
                "p/releases//y", "p/releases/r1/dir/", "other/z"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    with open_origin(f"s3://{bucket}/p", opts(rgw)) as o:
        assert o.list("") == ["releases/r1/ok"]


# -- the publish lock -------------------------------------------------------------

def strip_if_none_match(origin: S3Origin) -> None:
    """Make the real store behave like one that ignores If-None-Match (as RGW 16 may)."""
    def strip(request: Any, **_: Any) -> None:
        del request.headers["If-None-Match"]  # no error when absent
    origin.client.meta.events.register("before-sign.s3.PutObject", strip)


def test_lock_excludes_a_second_publisher_and_names_the_holder(rgw: RGW, s3: Any,  # noqa: F811
                                                               bucket: str) -> None:
    url = f"s3://{bucket}/p"
    with open_origin(url, opts(rgw)) as a, open_origin(url, opts(rgw)) as b:
        with a.lock("publisher A"):
            # this store honours If-None-Match (so the lock needed no settle period)
            with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
                s3.put_object(Bucket=bucket, Key=f"p/{LOCK_NAME}", Body=b"x", IfNoneMatch="*")
            with pytest.raises(OperationalError, match="locked by publisher A") as e, \
                    b.lock("publisher B"):
                pass
            assert e.value.hint and LOCK_NAME in e.value.hint
            lock = json.loads(s3.get_object(Bucket=bucket, Key=f"p/{LOCK_NAME}")["Body"].read())
            assert lock["owner"] == "publisher A"
            assert LOCK_NAME not in " ".join(a.list(""))
            # the lock object is not public
            assert anon_get(f"{rgw.endpoint}/{bucket}/p/{LOCK_NAME}", rgw.ca_file)[0] == 403
        with b.lock("publisher B"):  # released: free again
            pass
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def race(origins: list[S3Origin]) -> list[str]:
    """All origins try to lock at once; the owners that got it."""
    barrier = threading.Barrier(len(origins))
    winners: list[str] = []
    errors: list[BaseException] = []
    release = threading.Event()

    def attempt(i: int, o: S3Origin) -> None:
        barrier.wait()
        try:
            with o.lock(f"racer {i}"):
                winners.append(f"racer {i}")
                release.wait(5)
        except OperationalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i, o)) for i, o in enumerate(origins)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(winners) + len(errors) < len(origins) and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    for t in threads:
        t.join(10)
    assert len(winners) + len(errors) == len(origins)
    assert all("locked by racer" in str(e) or "could not take" in str(e) for e in errors)
    return winners


@pytest.mark.parametrize("honours_if_none_match", [True, False])
def test_concurrent_lock_attempts_one_wins(rgw: RGW, bucket: str,  # noqa: F811
                                           honours_if_none_match: bool) -> None:
    url = f"s3://{bucket}/p"
    origins = [S3Origin(url, opts(rgw)).__enter__() for _ in range(4)]
    try:
        if not honours_if_none_match:
            for o in origins:
                strip_if_none_match(o)
        for _round in range(3):
            assert len(race(origins)) == 1
    finally:
        for o in origins:
            o.__exit__(None, None, None)


def test_lock_fallback_detects_a_store_ignoring_if_none_match(rgw: RGW, bucket: str,  # noqa: F811
                                                              ) -> None:
    url = f"s3://{bucket}/p"
    with open_origin(url, opts(rgw)) as a, open_origin(url, opts(rgw)) as b:
        assert isinstance(a, S3Origin) and isinstance(b, S3Origin)
        strip_if_none_match(a)
        strip_if_none_match(b)
        t0 = time.monotonic()
        with a.lock("A", settle=0.3):
            assert time.monotonic() - t0 >= 0.3  # it noticed and waited to settle
            with pytest.raises(OperationalError, match="locked by A"), b.lock("B", settle=0.3):
                pass


def test_stale_lock_of_a_dead_process_is_taken_over(rgw: RGW, s3: Any,  # noqa: F811
                                                    bucket: str) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = {"owner": "crashed publish", "host": socket.gethostname(), "pid": dead.pid,
              "time": time.time(), "token": "x"}
    s3.put_object(Bucket=bucket, Key=f"p/{LOCK_NAME}", Body=json.dumps(record).encode())
    with open_origin(f"s3://{bucket}/p", opts(rgw)) as o, o.lock("next run"):
        lock = json.loads(s3.get_object(Bucket=bucket, Key=f"p/{LOCK_NAME}")["Body"].read())
        assert lock["owner"] == "next run"
    # a live holder elsewhere is respected (not stale)
    record.update(host="another-host", pid=1)
    s3.put_object(Bucket=bucket, Key=f"p/{LOCK_NAME}", Body=json.dumps(record).encode())
    with open_origin(f"s3://{bucket}/p", opts(rgw)) as o, \
            pytest.raises(OperationalError, match="locked by crashed publish"), o.lock("x"):
        pass


def test_release_does_not_delete_a_lock_it_no_longer_holds(rgw: RGW, s3: Any,  # noqa: F811
                                                           bucket: str) -> None:
    with open_origin(f"s3://{bucket}/p", opts(rgw)) as o, o.lock("A"):
        s3.put_object(Bucket=bucket, Key=f"p/{LOCK_NAME}", Body=b'{"owner": "thief"}')
    assert s3.get_object(Bucket=bucket, Key=f"p/{LOCK_NAME}")["Body"].read() == \
        b'{"owner": "thief"}'


def test_unreachable_endpoint_is_a_clear_error_after_retries(rgw: RGW) -> None:  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with open_origin("s3://bucket/p", opts(rgw, endpoint_url=f"https://127.0.0.1:{port}",
                                           retries=2, timeout=2.0)) as o:
        t0 = time.monotonic()
        with pytest.raises(OperationalError, match="cannot reach") as e:
            o.stat("a")
        assert "after 2 retries" in str(e.value) and e.value.hint
        assert time.monotonic() - t0 < 20


def test_taking_the_lock_aborts_uploads_a_killed_publish_left(rgw: RGW, s3: Any,  # noqa: F811
                                                              bucket: str) -> None:
    left = s3.create_multipart_upload(Bucket=bucket, Key="p/releases/r1/initrd")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="p/releases/r1/initrd", UploadId=left, PartNumber=1,
                   Body=b"x" * 1000)
    other = s3.create_multipart_upload(Bucket=bucket, Key="q/releases/r1/initrd")["UploadId"]
    with open_origin(f"s3://{bucket}/p", opts(rgw)) as o, o.lock("next run"):
        ids = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]]
    assert ids == [other]  # only under this origin's prefix


@contextlib.contextmanager
def stalled(rgw: RGW, seconds: float | None) -> Iterator[None]:  # noqa: F811
    """radosgw frozen (SIGSTOP): connections are accepted, nothing is answered. Thawed
    after ``seconds`` (in the background) or when the block ends, whatever happens."""
    proc = rgw.procs["rgw"]
    proc.send_signal(signal.SIGSTOP)
    timer = threading.Timer(seconds, proc.send_signal, (signal.SIGCONT,)) if seconds else None
    if timer:
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()
        proc.send_signal(signal.SIGCONT)


def test_retries_ride_out_a_stalled_store(rgw: RGW, bucket: str) -> None:  # noqa: F811
    with open_origin(f"s3://{bucket}/p", opts(rgw, timeout=1.0, retries=6)) as o:
        t0 = time.monotonic()
        with stalled(rgw, 1.5):
            o.put_bytes("a", b"a", sha256=sha(b"a"))  # the first attempts time out
        assert time.monotonic() - t0 >= 1.5  # it really waited the stall out
        assert o.stat("a") is not None


def test_a_store_that_stays_stalled_fails_clearly(rgw: RGW, bucket: str) -> None:  # noqa: F811
    with open_origin(f"s3://{bucket}/p", opts(rgw, timeout=1.0, retries=1)) as o, \
            stalled(rgw, None), pytest.raises(OperationalError, match="after 1 retries") as e:
        o.stat("a")
    assert e.value.hint and "run again" in e.value.hint


def test_a_full_quota_is_reported_as_out_of_space(rgw: RGW, tmp_path: Path) -> None:  # noqa: F811
    """The store's "disk full": a user quota of 64 KiB (RGW answers 403 QuotaExceeded)."""
    uid = f"quota-{os.getpid()}"
    access, secret = rgw.create_user(uid)
    rgw.admin("quota", "set", "--quota-scope=user", f"--uid={uid}", "--max-size=65536")
    rgw.admin("quota", "enable", "--quota-scope=user", f"--uid={uid}")
    creds = Credentials("basic", secret, username=access, source="test")
    f = tmp_path / "big"
    f.write_bytes(os.urandom(200_000))
    data = f.read_bytes()
    with S3Origin(f"s3://{uid}/p", opts(rgw, credentials=creds)) as o:
        o.client.create_bucket(Bucket=uid)
        o.put_bytes("small", b"x" * 1000, sha256=sha(b"x" * 1000))  # under the quota
        with pytest.raises(OperationalError, match="out of space or quota") as e:
            o.put_file("big", f, size=len(data), sha256=sha(data))
        assert e.value.hint and "resumes" in e.value.hint
        assert o.stat("big") is None  # nothing half-written is visible


def test_a_file_changed_after_hashing_never_leaves_a_lying_object(
        rgw: RGW, s3: Any, bucket: str, tmp_path: Path) -> None:  # noqa: F811
    """The sha256 metadata is what a re-run trusts to skip an object: it must be true."""
    f = tmp_path / "initrd"
    f.write_bytes(os.urandom(11 << 20))
    claimed = sha(b"what the file held when the release was hashed")
    with S3Origin(f"s3://{bucket}/p", opts(rgw), multipart_threshold=6 << 20,
                  part_size=5 << 20) as o:
        for key in ("multipart", "single"):
            if key == "single":
                o.multipart_threshold = 64 << 20
            with pytest.raises(OperationalError, match="changed while it was uploaded"):
                o.put_file(key, f, size=11 << 20, sha256=claimed)
            assert o.stat(key) is None
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
