"""An S3 store is an outsider like any origin: the text of its errors is escaped before
it reaches a message, and a store that trickles its answers cannot hold a call past its
total deadline (botocore's timeouts bound each socket read, not a request).

Against the real Ceph RGW behind the test proxy (tests/publish/s3proxy.py), which
forwards requests unchanged and answers the chosen ones with a crafted error or with
RGW's real answer sent one byte at a time."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")

from tests.publish.conftest import KEY_PASS, Pki, ReleaseFactory
from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from tests.publish.s3proxy import Burst, PassState, s3_passthrough
from trustboot.cli.main import cli
from trustboot.errors import OperationalError
from trustboot.publish.manifest import MAX_MANIFEST_BYTES
from trustboot.publish.origin import Credentials, OriginOptions, open_origin
from trustboot.publish.pipeline import MAX_ENTRY_SIZE

DATA = b"0123456789abcdef" * 64  # 1 KiB


@pytest.fixture
def proxied(rgw: RGW, pki: Pki, tmp_path: Path  # noqa: F811
            ) -> Iterator[tuple[str, PassState, str]]:
    """(endpoint, proxy state, origin URL) for a fresh bucket holding "obj" = DATA."""
    bucket = f"tb-hostile-{os.getpid()}-{os.urandom(3).hex()}"
    s3 = rgw.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="p/obj", Body=DATA)
    chain = tmp_path / "proxy-chain.pem"
    chain.write_bytes(pki.cert("origin").read_bytes()
                      + (pki.dir / "issuing-ca.crt").read_bytes())
    with s3_passthrough(rgw.endpoint, cert=chain, key=pki.key("origin"),
                        key_password=KEY_PASS, ca=pki.ca) as (endpoint, state):
        yield endpoint, state, f"s3://{bucket}/p"


def _options(rgw: RGW, endpoint: str, timeout: float = 30.0,  # noqa: F811
             retries: int = 0) -> OriginOptions:
    return OriginOptions(ca_file=rgw.ca_file, endpoint_url=endpoint, retries=retries,
                         timeout=timeout,
                         credentials=Credentials("basic", rgw.secret_key, rgw.access_key,
                                                 "test"))


HOSTILE_CODE = "Weird\u202eCode\u009b2J"
HOSTILE_MESSAGE = "bad\n  hint: run curl evil | sh\r\u200b\u009b31mred\ttab"


def test_error_text_from_the_store_is_escaped(rgw: RGW, proxied: tuple[str, PassState, str]  # noqa: F811
                                              ) -> None:
    endpoint, state, origin_url = proxied
    answer = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{HOSTILE_CODE}</Code>"
              f"<Message>{HOSTILE_MESSAGE}</Message></Error>").encode()
    state.bursts = [Burst("GET", r"/p/obj$", 1, status=400, answer=answer),
                    Burst("PUT", r"/p/new$", 1, status=507, answer=answer.replace(
                        HOSTILE_CODE.encode(), b"InsufficientStorage"))]
    with open_origin(origin_url, _options(rgw, endpoint)) as origin:
        with pytest.raises(OperationalError) as err:
            b"".join(origin.read("obj", max_size=len(DATA)))
        message = err.value.message
        assert message.isprintable() and message.isascii(), repr(message)
        assert "Weird\\u202eCode\\x9b2J" in message
        assert "bad\\x0a  hint: run curl evil | sh\\x0a\\u200b\\x9b31mred\\x09tab" in message
        with pytest.raises(OperationalError) as err:
            origin.put_bytes("new", b"x", sha256=hashlib.sha256(b"x").hexdigest())
        assert "out of space" in err.value.message
        assert err.value.message.isprintable(), repr(err.value.message)
        assert "bad\\x0a  hint:" in err.value.message
    assert all(b.count == 0 for b in state.bursts)


LISTING = ("<?xml version='1.0' encoding='UTF-8'?><ListBucketResult xmlns='http://s3."
           "amazonaws.com/doc/2006-03-01/'><Name>b</Name><Prefix>p/</Prefix><KeyCount>1"
           "</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents>"
           "<Key>p/releases/x</Key><Size>{size}</Size><LastModified>{when}</LastModified>"
           "<ETag>\"e\"</ETag></Contents></ListBucketResult>")


@pytest.mark.parametrize("size,when", [("abc", "2020-01-01T00:00:00Z"),
                                       ("\u00b2", "2020-01-01T00:00:00Z"),
                                       ("1", "99999-01-01T00:00:00Z"),
                                       ("1", "no date")])
def test_a_listing_botocore_cannot_parse_is_the_stores_error(
        rgw: RGW, proxied: tuple[str, PassState, str], size: str, when: str  # noqa: F811
        ) -> None:
    """A size that is no number or a date that is none in the store's answer: botocore's
    parser raises ValueError, no BotoCoreError, and every publish, list or prune of that
    origin ended in an internal error (exit 70). It is the store's failure (exit 1),
    named, its text escaped."""
    endpoint, state, origin_url = proxied
    answer = LISTING.format(size=size, when=when).encode()
    state.bursts = [Burst("GET", r"list-type=2", 2, status=200, answer=answer)]
    with open_origin(origin_url, _options(rgw, endpoint)) as origin:
        for call in (origin.list, origin.list_dirs):
            with pytest.raises(OperationalError) as err:
                call("")
            assert err.value.exit_code == 1
            assert "listing failed: the store's answer could not be read" \
                in err.value.message, err.value.message
            assert err.value.message.isprintable(), repr(err.value.message)
        assert b"".join(origin.read("obj", max_size=len(DATA))) == DATA  # the rest works
    assert all(b.count == 0 for b in state.bursts)


@pytest.mark.parametrize("body_only", [False, True], ids=["headers", "body"])
def test_a_trickled_get_ends_within_its_deadline(
        rgw: RGW, proxied: tuple[str, PassState, str], body_only: bool) -> None:  # noqa: F811
    """RGW's real answer to a GET, one byte every 50 ms (from its status line, or from
    its body): every socket read gets a byte well within the 2 s read timeout, so only a
    total deadline ends it (the whole answer would take about a minute)."""
    endpoint, state, origin_url = proxied
    state.bursts = [Burst("GET", r"/p/obj$", 10, trickle=0.05, trickle_body=body_only)]
    with open_origin(origin_url, _options(rgw, endpoint, timeout=2.0)) as origin:
        start = time.monotonic()
        with pytest.raises(OperationalError) as err:
            b"".join(origin.read("obj", max_size=len(DATA)))
        took = time.monotonic() - start
        # the origin is still usable: the next call is not cut short
        state.bursts = []
        assert b"".join(origin.read("obj", max_size=len(DATA))) == DATA
    assert took < 2.0 + len(DATA) / (64 << 10) + 2, took
    assert err.value.message.startswith(f"{origin_url}/obj was served too slowly"), \
        err.value.message
    assert err.value.hint is not None and "trickles" in err.value.hint
    assert [s[:2] for s in state.seen][:1] == [("GET", f"/{origin_url[5:].split('/')[0]}/p/obj")]


def test_a_trickled_lock_record_ends_within_its_deadline(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """The lock record is read by whoever finds the lock taken, by the heartbeat and by
    the entry switch's check: that GET had no total deadline, so a store trickling it
    (a byte every 0.2 s, each read well within the 2 s read timeout) held publish for
    minutes (as long as it liked, with a longer answer). Now it is a call like any other."""
    endpoint, state, origin_url = proxied
    bucket = origin_url[5:].split("/")[0]
    record = {"owner": "other", "host": "elsewhere", "pid": 1, "time": time.time(),
              "token": "t"}
    rgw.client().put_object(Bucket=bucket, Key="p/.trustboot-publish.lock",
                            Body=json.dumps(record).encode())
    state.bursts = [Burst("GET", r"/p/\.trustboot-publish\.lock$", 10, trickle=0.2)]
    with open_origin(origin_url, _options(rgw, endpoint, timeout=2.0)) as origin:
        start = time.monotonic()
        with pytest.raises(OperationalError) as err, origin.lock("me"):
            pass
        took = time.monotonic() - start
    # a prompt call: the head within the timeout and a second (it had what a 1 MiB
    # answer may take, 18 s)
    assert took < 2.0 + 1 + 2, took
    assert "served too slowly" in err.value.message, err.value.message


# the proxy stops trickling after this long (the connection closed), so a client that
# never gives up is not held for the whole answer
TRICKLE_FOR = 9.0


@pytest.mark.parametrize("mode,max_size", [
    ("body", MAX_MANIFEST_BYTES), ("head", MAX_MANIFEST_BYTES), ("body", MAX_ENTRY_SIZE),
    ("close", len(DATA)), ("close", MAX_MANIFEST_BYTES)])
def test_a_trickled_object_is_given_up_on_by_what_came(
        rgw: RGW, proxied: tuple[str, PassState, str], mode: str,  # noqa: F811
        max_size: int) -> None:
    """S3Origin.read (release.json, manifests, the entry script, the switch journal): its
    deadline was what an object of ``max_size`` may take at the slowest rate, a small
    object trickled a byte every half second held the read 66 s (a 4 MiB cap) or 258 s
    (16 MiB) whatever the timeout. Now the head must come within the timeout and a
    second, then the body at MIN_RATE after a timeout's grace; a cut is not retried.
    "close": the answer says Connection: close, and http.client lets go of the socket the
    body is still read from: the watchdog never cut it, whatever its deadline (held until
    the store stopped, here TRICKLE_FOR)."""
    endpoint, state, origin_url = proxied
    state.bursts = [Burst("GET", r"/p/obj$", 10, trickle=0.5, trickle_body=mode != "head",
                          close=mode == "close", trickle_for=TRICKLE_FOR)]
    with open_origin(origin_url, _options(rgw, endpoint, timeout=2.0, retries=2)) as origin:
        start = time.monotonic()
        with pytest.raises(OperationalError) as err:
            b"".join(origin.read("obj", max_size=max_size))
        took = time.monotonic() - start
        state.bursts = []
        assert b"".join(origin.read("obj", max_size=max_size)) == DATA
    assert took < 2.0 + 1 + 2, took
    assert err.value.exit_code == 1
    assert err.value.message.startswith(f"{origin_url}/obj was served too slowly"), \
        err.value.message
    # given up on, not sent again (the retries would each be trickled as long)
    assert [s[0] for s in state.seen if s[1].endswith("/p/obj")] == ["GET", "GET"]


@pytest.mark.parametrize("call", ["stat", "list", "list_dirs"])
def test_a_trickled_head_or_listing_is_given_up_on_by_what_came(
        rgw: RGW, proxied: tuple[str, PassState, str], call: str) -> None:  # noqa: F811
    """A HEAD (stat) and a listing page are answered at once by the store too: they had
    what a 1 MiB answer may take (18 s with a 2 s timeout), a trickled listing page for
    each page of a listing."""
    endpoint, state, origin_url = proxied
    state.bursts = [Burst("HEAD", r"/p/obj$", 10, trickle=0.5, trickle_for=TRICKLE_FOR)
                    if call == "stat" else
                    Burst("GET", r"list-type=2", 10, trickle=0.5, trickle_body=True,
                          trickle_for=TRICKLE_FOR)]
    with open_origin(origin_url, _options(rgw, endpoint, timeout=2.0)) as origin:
        start = time.monotonic()
        with pytest.raises(OperationalError, match="served too slowly") as err:
            if call == "stat":
                origin.stat("obj")
            elif call == "list":
                origin.list("")
            else:
                origin.list_dirs("")
        took = time.monotonic() - start
        state.bursts = []
        assert origin.stat("obj") is not None and origin.list("") == ["obj"]
    assert took < 2.0 + 1 + 2, took
    assert err.value.message.startswith(origin_url), err.value.message


@pytest.mark.parametrize("mode", ["body", "head"])
def test_publish_rollback_gives_up_on_a_trickled_manifest(
        rgw: RGW, pki: Pki, make_release: ReleaseFactory, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The CLI through the real S3 path: a release.json trickled held `publish rollback
    --timeout 2` for 66 s (its 4 MiB cap at the slowest rate)."""
    bucket = f"tb-trickled-{os.getpid()}-{os.urandom(3).hex()}"
    rgw.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv("TB_TEST_S3_CREDENTIALS", f"{rgw.access_key}:{rgw.secret_key}")
    origin = f"s3://{bucket}/boot"
    release = make_release({"boot.ipxe": b"#!ipxe\necho one\n", "vmlinuz": b"k" * 1000})
    common = ["--pki", str(pki.dir), "--credentials-env", "TB_TEST_S3_CREDENTIALS"]
    res = CliRunner().invoke(cli, ["publish", str(release), origin, "--release-id", "r1",
                                   "--endpoint-url", rgw.endpoint, *common])
    assert res.exit_code == 0, res.output
    chain = tmp_path / "proxy-chain.pem"
    chain.write_bytes(pki.cert("origin").read_bytes()
                      + (pki.dir / "issuing-ca.crt").read_bytes())
    with s3_passthrough(rgw.endpoint, cert=chain, key=pki.key("origin"),
                        key_password=KEY_PASS, ca=pki.ca) as (endpoint, state):
        state.bursts = [Burst("GET", r"/boot/releases/r1/release\.json$", 10, trickle=0.5,
                              trickle_body=mode == "body", trickle_for=TRICKLE_FOR)]
        start = time.monotonic()
        res = CliRunner().invoke(cli, ["publish", "rollback", origin, "r1", "--endpoint-url",
                                       endpoint, "--timeout", "2", *common])
        took = time.monotonic() - start
    assert res.exit_code == 1, res.output
    assert f"{origin}/releases/r1/release.json was served too slowly" in res.output, \
        res.output
    assert took < 7, took


def test_a_get_whose_head_is_cut_short_is_not_an_empty_object(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """A store (or the path to it) closing the connection within an answer's head:
    http.client takes the connection's end for the head's, and the object, read to that
    end, was empty: `publish rollback` called its release.json no JSON (exit 3). It is a
    transfer error (retried; exit 1 once the retries are spent)."""
    endpoint, state, origin_url = proxied
    # about 50 bytes of the head (the length comes last), then the connection closed
    state.bursts = [Burst("GET", r"/p/obj$", 10, trickle=0.02, trickle_for=1.0)]
    with open_origin(origin_url, _options(rgw, endpoint, timeout=2.0, retries=1)) as origin:
        with pytest.raises(OperationalError) as err:
            b"".join(origin.read("obj", max_size=1 << 20))
        assert err.value.exit_code == 1
        assert err.value.message.startswith(f"{origin_url}/obj: GET failed"), \
            err.value.message
        state.bursts = [Burst("GET", r"/p/obj$", 1, trickle=0.02, trickle_for=1.0)]
        assert b"".join(origin.read("obj", max_size=1 << 20)) == DATA  # retried


def test_a_head_answer_without_content_length_is_the_stores_error(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """A HEAD answer without Content-Length: botocore leaves the size out, and every
    stat of the origin (a publish's resume check, a copy) was a KeyError, an internal
    error (exit 70). It is the store's failure (exit 1), named."""
    endpoint, state, origin_url = proxied
    state.bursts = [Burst("HEAD", r"/p/obj$", 1, status=200, answer=b"")]
    with open_origin(origin_url, _options(rgw, endpoint)) as origin:
        with pytest.raises(OperationalError) as err:
            origin.stat("obj")
        assert err.value.exit_code == 1
        assert err.value.message.startswith(f"{origin_url}/obj: HEAD failed"), \
            err.value.message
        assert "no Content-Length" in err.value.message
        stat = origin.stat("obj")  # RGW's own answer, which has one
        assert stat is not None and stat.size == len(DATA)
    assert all(b.count == 0 for b in state.bursts)


CONTENTS = ("<Contents>{key}<Size>1</Size><LastModified>2020-01-01T00:00:00Z</LastModified>"
            "<ETag>\"e\"</ETag></Contents>")


def test_listed_objects_without_a_name_or_outside_the_prefix_are_not_handed_on(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """A listing entry without a Key was a KeyError (exit 70); one whose Key lies
    outside the origin's prefix was cut at the prefix's length and handed on as one of
    ours ("q/releases/x" under "p/": "releases/x"), for `publish list` to show and prune
    to judge. Both are left out, as list_dirs leaves such names out."""
    endpoint, state, origin_url = proxied
    entries = "".join(CONTENTS.format(key=key) for key in (
        "<Key>p/releases/r1/ok</Key>", "", "<Key>q/releases/r2/theirs</Key>",
        "<Key>p</Key>"))
    answer = LISTING.replace(LISTING[LISTING.index("<Contents>"):
                                     LISTING.index("</ListBucketResult>")], entries)
    state.bursts = [Burst("GET", r"list-type=2", 1, status=200, answer=answer.encode())]
    with open_origin(origin_url, _options(rgw, endpoint)) as origin:
        assert origin.list("") == ["releases/r1/ok"]
    assert all(b.count == 0 for b in state.bursts)


def test_multipart_answers_without_their_ids_are_the_stores_error(
        rgw: RGW, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    """An answer to starting a multipart upload without its UploadId, or to a part's
    upload without the part's ETag: KeyErrors (exit 70) before. Each is the store's
    failure (exit 1), and a started upload is aborted (its parts are billed until then)."""
    from trustboot.publish.s3 import S3Origin

    bucket = f"tb-mp-{os.getpid()}-{os.urandom(3).hex()}"
    s3 = rgw.client()
    s3.create_bucket(Bucket=bucket)
    f = tmp_path / "initrd"
    f.write_bytes(os.urandom(7 << 20))  # two parts
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    chain = tmp_path / "proxy-chain.pem"
    chain.write_bytes(pki.cert("origin").read_bytes()
                      + (pki.dir / "issuing-ca.crt").read_bytes())
    started = (b"<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult xmlns="
               b"'http://s3.amazonaws.com/doc/2006-03-01/'><Bucket>b</Bucket><Key>k</Key>"
               b"</InitiateMultipartUploadResult>")
    with s3_passthrough(rgw.endpoint, cert=chain, key=pki.key("origin"),
                        key_password=KEY_PASS, ca=pki.ca) as (endpoint, state), \
            S3Origin(f"s3://{bucket}/p", _options(rgw, endpoint), multipart_threshold=6 << 20,
                     part_size=5 << 20) as origin:
        for burst, missing in ((Burst("POST", r"\?uploads", 1, status=200, answer=started),
                                "UploadId"),
                               (Burst("PUT", r"partNumber=1", 1, status=200, answer=b""),
                                "ETag")):
            state.bursts = [burst]
            with pytest.raises(OperationalError) as err:
                origin.put_file("releases/r1/initrd", f, size=f.stat().st_size, sha256=digest)
            assert err.value.exit_code == 1
            assert f"no {missing}" in err.value.message, err.value.message
            assert burst.count == 0
            assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        origin.put_file("releases/r1/initrd", f, size=f.stat().st_size, sha256=digest)
        assert origin.stat("releases/r1/initrd") is not None  # the control: it uploads


def test_a_tls_error_within_an_objects_body_is_the_stores_error(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """A record that does not decrypt in the middle of an object's body (a middlebox's
    corruption, a broken TLS stack): urllib3 raises its SSLError, which botocore's
    streaming body passes on as it is; it was an internal error (exit 70). It is a failed
    transfer of the store's (exit 1), named, and the next read works."""
    endpoint, state, origin_url = proxied
    state.bursts = [Burst("GET", r"/p/obj$", 1, tls_break=100)]
    with open_origin(origin_url, _options(rgw, endpoint)) as origin:
        with pytest.raises(OperationalError) as err:
            b"".join(origin.read("obj", max_size=1 << 20))
        assert err.value.exit_code == 1
        assert err.value.message.startswith(
            f"{origin_url}/obj: GET failed: the transfer broke off"), err.value.message
        assert "bad record mac" in err.value.message.lower(), err.value.message
        assert err.value.message.isprintable(), repr(err.value.message)
        assert b"".join(origin.read("obj", max_size=1 << 20)) == DATA
    assert all(b.count == 0 for b in state.bursts)


def test_a_tls_error_within_the_lock_record_is_the_stores_error(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """The same within the lock record's body, which every publish reads before it takes
    the lock: a failed transfer (exit 1), not an internal error."""
    endpoint, state, origin_url = proxied
    rgw.client().put_object(Bucket=origin_url.split("/")[2], Key="p/.trustboot-publish.lock",
                            Body=b'{"owner": "someone else", "note": "' + b"x" * 200 + b'"}')
    state.bursts = [Burst("GET", r"/p/\.trustboot-publish\.lock$", 1, tls_break=20)]
    with open_origin(origin_url, _options(rgw, endpoint)) as origin:
        with pytest.raises(OperationalError) as err, origin.lock("tester"):
            pass
        assert err.value.exit_code == 1
        assert "reading the lock failed: the transfer broke off" in err.value.message, \
            err.value.message
    assert all(b.count == 0 for b in state.bursts)


def test_a_large_object_is_read_as_before(rgw: RGW, pki: Pki) -> None:  # noqa: F811
    """The positive control, on the real RGW: a healthy object of several MiB reads whole,
    in reads growing from 64 KiB to 1 MiB (not shrunk to the first read's size)."""
    bucket = f"tb-large-{os.getpid()}-{os.urandom(3).hex()}"
    data = os.urandom(9 << 20)
    s3 = rgw.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="p/big", Body=data)
    with open_origin(f"s3://{bucket}/p", _options(rgw, rgw.endpoint, timeout=2.0)) as origin:
        chunks = list(origin.read("big", max_size=len(data)))
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks[:5]] == [64 << 10, 128 << 10, 256 << 10, 512 << 10,
                                            1 << 20]
    assert max(len(c) for c in chunks) == 1 << 20


def test_the_deadline_watch_reaches_no_private_attribute_of_botocore() -> None:
    """The watch hooks in through botocore's public ``before-send`` event: an attribute
    with a leading underscore is read or set only on the origin's own objects (a
    botocore upgrade that renames its internals must not silently drop the deadline)."""
    import ast

    import trustboot.publish.s3 as s3

    tree = ast.parse(Path(s3.__file__).read_text(encoding="utf-8"))
    own = {"self", "cls", "_current", "watch", "outer"}
    reached = sorted(
        f"{ast.unparse(node.value)}.{node.attr} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in own))
    assert reached == [], reached


def test_an_origin_entered_again_still_has_its_deadline(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """Leaving the origin stops its deadline watchdog; entering it again must start it
    anew (one watchdog per origin, not one per entry), or a trickled answer would hold
    the second use for about a minute."""
    endpoint, state, origin_url = proxied
    origin = open_origin(origin_url, _options(rgw, endpoint, timeout=2.0))
    with origin:
        assert b"".join(origin.read("obj", max_size=len(DATA))) == DATA
    state.bursts = [Burst("GET", r"/p/obj$", 10, trickle=0.05, trickle_body=True)]
    with origin:
        start = time.monotonic()
        with pytest.raises(OperationalError) as err:
            b"".join(origin.read("obj", max_size=len(DATA)))
        took = time.monotonic() - start
    assert took < 2.0 + len(DATA) / (64 << 10) + 2, took
    assert "served too slowly" in err.value.message


def test_a_handler_registered_after_entering_runs_before_the_request_is_sent(
        rgw: RGW, proxied: tuple[str, PassState, str]) -> None:  # noqa: F811
    """The origin's sender answers botocore's before-send event last: a handler a caller
    (or a test holding a request) registers later still sees the request unsent."""
    from typing import Any

    endpoint, _state, origin_url = proxied
    bucket = origin_url[5:].split("/")[0]
    seen: list[bool] = []
    with open_origin(origin_url, _options(rgw, endpoint)) as origin:
        def look(request: Any, **_: Any) -> None:
            if request.method != "PUT":
                return
            try:
                rgw.client().head_object(Bucket=bucket, Key="p/late")
                seen.append(True)
            except Exception:  # 404: not stored yet
                seen.append(False)

        # the sender's own event, not a more specific one (those run first anyway)
        origin.client.meta.events.register("before-send.s3", look)  # type: ignore[attr-defined]
        origin.put_bytes("late", b"x", sha256=hashlib.sha256(b"x").hexdigest())
    assert seen == [False]


ENDLESS_CAP = 200 << 20  # the test server gives up here (never reached with the cap)
endless_sent: dict[str, int] = {}


class _Endless(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint whose every answer is 200 with a body that never ends (no length,
    the connection closed after it), sent as fast as the client takes it."""

    protocol_version = "HTTP/1.1"

    def _endless(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n<?xml version='1.0'?>")
        block = b"<Contents><Key>x</Key></Contents>" * 4096
        endless_sent[self.command] = 0
        try:
            while endless_sent[self.command] < ENDLESS_CAP:
                self.wfile.write(block)
                endless_sent[self.command] += len(block)
        except OSError:
            pass  # the client stopped reading: what it should do

    do_GET = do_PUT = _endless

    def log_message(self, *args: object) -> None:
        pass


def test_an_endless_answer_is_cut_at_the_cap(pki: Pki) -> None:
    """botocore reads an answer (other than a GET's object body) whole into memory: a
    store answering a listing or a PUT with an endless body, fast, filled memory until the
    call's deadline (about 46 s by default: tens of GB on a fast link). Read at most
    MAX_ANSWER_READ bytes, then the store's error (exit 1), nothing retried."""
    from tests.publish.conftest import http_server
    from trustboot.publish import s3

    with http_server(_Endless) as url:
        options = OriginOptions(endpoint_url=url.rstrip("/"), unsafe_http=True, retries=0,
                                ca_file=pki.ca,
                                timeout=30.0, credentials=Credentials("basic", "secret",
                                                                      "access", "test"))
        with open_origin("s3://bucket/p", options) as origin:
            started = time.monotonic()
            with pytest.raises(OperationalError) as err:
                origin.list("")
            assert "larger than" in err.value.message, err.value.message
            with pytest.raises(OperationalError) as err:
                origin.put_bytes("k", b"x", sha256=hashlib.sha256(b"x").hexdigest())
            assert "larger than" in err.value.message, err.value.message
            assert time.monotonic() - started < 20
    for method in ("GET", "PUT"):
        # no further than the cap (plus what the socket buffers held)
        assert endless_sent[method] < s3.MAX_ANSWER_READ + (8 << 20), endless_sent


PAGES_STOP = 3000  # pages the endless store serves before its last one (the test's bound)
pages_served: list[str] = []


class _EndlessPages(http.server.BaseHTTPRequestHandler):
    """An S3 listing that is always truncated, each page with a new continuation token
    (botocore stops only on a token seen twice) and one key, or none with ?empty."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        pages_served.append(self.path)
        n = len(pages_served)
        more = n < PAGES_STOP
        contents = "" if "empty" in self.path or "delimiter" in self.path else \
            f"<Contents><Key>p/releases/r1/object-{n}</Key><Size>1</Size></Contents>"
        prefixes = f"<CommonPrefixes><Prefix>p/releases/r{n}/</Prefix></CommonPrefixes>" \
            if "delimiter" in self.path else ""
        body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name>'
                f"<KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>"
                + (f"<NextContinuationToken>t{n}</NextContinuationToken>" if more else "")
                + f"{contents}{prefixes}</ListBucketResult>").encode()
        # one write: headers and body apart wait on the client's delayed ACK (40 ms each)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("call", ["list", "list-empty-pages", "list_dirs"])
def test_a_listing_without_end_is_cut_at_the_listing_cap(
        pki: Pki, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """Every page is capped (MAX_ANSWER_READ), but a store that always answers "more"
    with a new token held `publish list`, prune and publish forever, memory growing
    with every page (or, with empty pages, the run only). Bounded: origin.MAX_LISTED."""
    from tests.publish.conftest import http_server
    from trustboot.publish import origin as origin_module

    monkeypatch.setattr(origin_module, "MAX_LISTED", 300)
    pages_served.clear()
    with http_server(_EndlessPages) as url:
        options = OriginOptions(endpoint_url=url.rstrip("/"), unsafe_http=True, retries=0,
                                ca_file=pki.ca, timeout=30.0,
                                credentials=Credentials("basic", "secret", "access", "test"))
        with open_origin("s3://bucket/p", options) as origin, \
                pytest.raises(OperationalError, match="did not end within 300 names"):
            if call == "list_dirs":
                origin.list_dirs("releases/")
            else:
                origin.list("releases/empty/" if call == "list-empty-pages" else "releases/")
    assert len(pages_served) <= 301


class _EndlessError(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint answering an object's GET with 403 and an error body that never
    ends (sent as fast as the client takes it)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n"
                         b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>")
        block = b"denied " * 8192
        endless_sent["GET-error"] = 0
        try:
            while endless_sent["GET-error"] < ENDLESS_CAP:
                self.wfile.write(block)
                endless_sent["GET-error"] += len(block)
        except OSError:
            pass  # the client stopped reading: what it should do
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_an_endless_error_answer_to_a_get_is_cut_at_the_cap(pki: Pki) -> None:
    """An object's GET hands its body to the caller unread (read capped by the caller),
    but botocore reads an error answer's body whole to parse it: a store answering a
    GET with 403 and an endless body filled memory for the whole of the read's deadline
    (which grows with the object's size). Error bodies are capped like every answer."""
    from tests.publish.conftest import http_server
    from trustboot.publish import s3

    with http_server(_EndlessError) as url:
        options = OriginOptions(endpoint_url=url.rstrip("/"), unsafe_http=True, retries=0,
                                ca_file=pki.ca, timeout=30.0,
                                credentials=Credentials("basic", "secret", "access", "test"))
        with open_origin("s3://bucket/p", options) as origin:
            started = time.monotonic()
            with pytest.raises(OperationalError) as err:
                b"".join(origin.read("vmlinuz", max_size=64 << 30))
            assert "larger than" in err.value.message, err.value.message
            assert time.monotonic() - started < 20
    assert endless_sent["GET-error"] < s3.MAX_ANSWER_READ + (8 << 20), endless_sent


class _StalledError(http.server.BaseHTTPRequestHandler):
    """An object's GET answered 403, its error body stopping half way for 4 s."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 500\r\n\r\n"
                         b"<?xml version='1.0'?><Error><Code>AccessDenied</Code>")
        self.wfile.flush()
        time.sleep(4)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_stalled_error_answer_to_a_get_is_the_stores_error(pki: Pki) -> None:
    """That error body was read by botocore outside the sender, where no urllib3 error is
    mapped: its read timeout escaped as urllib3's ReadTimeoutError, an internal error
    (exit 70). It is read in the sender now: an OperationalError (exit 1)."""
    from tests.publish.conftest import http_server

    with http_server(_StalledError) as url:
        options = OriginOptions(endpoint_url=url.rstrip("/"), unsafe_http=True, retries=0,
                                ca_file=pki.ca, timeout=1.0,
                                credentials=Credentials("basic", "secret", "access", "test"))
        with open_origin("s3://bucket/p", options) as origin, \
                pytest.raises(OperationalError):
            b"".join(origin.read("vmlinuz", max_size=1024))


failing_requests: list[str] = []


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """A store that answers every request 503 (a retryable error)."""

    protocol_version = "HTTP/1.1"

    def _unavailable(self) -> None:
        failing_requests.append(f"{self.command} {self.path}")
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable'
                b"</Code><Message>down</Message></Error>")
        self.wfile.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml"
                         b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    do_GET = do_HEAD = do_PUT = _unavailable

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_are_what_the_option_says(pki: Pki, monkeypatch: pytest.MonkeyPatch,
                                          retries: int) -> None:
    """--retries N is N retries after the first request, as on WebDAV: botocore's
    max_attempts counts retries only, so N + 1 there sent N + 1 retries (two requests
    with --retries 0, each a wait on a failing store)."""
    from tests.publish.conftest import http_server

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)  # botocore's own setting
    failing_requests.clear()
    with http_server(_Unavailable) as url:
        options = OriginOptions(endpoint_url=url.rstrip("/"), unsafe_http=True,
                                retries=retries, ca_file=pki.ca, timeout=10.0,
                                credentials=Credentials("basic", "secret", "access", "test"))
        with open_origin("s3://bucket/p", options) as origin, \
                pytest.raises(OperationalError):
            b"".join(origin.read("obj", max_size=1 << 10))
    assert len(failing_requests) == retries + 1, failing_requests
