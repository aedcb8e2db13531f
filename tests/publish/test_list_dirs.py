"""``Origin.list_dirs``: the directories directly under a prefix, in one listing of that
level (file://: one directory read; nginx WebDAV over TLS: one PROPFIND Depth: 1; Ceph
RGW: ListObjectsV2 with a delimiter), with hostile names left out as ``list`` leaves them
out. And a release re-run without the publish cache on RGW still finds its dated id (the
file:// and WebDAV runs are in tests/release/test_release_ids.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.publish.conftest import KEY_PASS, Nginx, Pki, logged_requests
from tests.publish.rgw import RGW, release_origin, rgw  # noqa: F401  (the session fixture)
from tests.release.lab import make_lab
from tests.release.test_staging import SMALL, _release
from trustboot.publish.origin import (
    Credentials,
    Origin,
    OriginOptions,
    load_credentials,
    open_origin,
)

_COUNTER = itertools.count()
OBJECTS = ["releases/r1/release.json", "releases/r1/linux/vmlinuz", "releases/r2/release.json",
           "releases/loose", "other/x", "top"]


@contextmanager
def _origin(kind: str, nginx: Nginx, pki: Pki, tmp_path: Path, store: RGW | None = None
            ) -> Iterator[tuple[Origin, Any]]:
    """The origin and where it keeps its bytes (a directory, or (s3 client, bucket))."""
    if kind == "webdav":
        opts = OriginOptions(ca_file=pki.ca, client_cert=pki.cert("publisher"),
                             client_key=pki.key("publisher"),
                             client_key_passphrase=KEY_PASS.encode())
        with open_origin(nginx.url, opts) as origin:
            yield origin, nginx.root
    elif kind == "file":
        with open_origin(f"file://{tmp_path / 'origin'}", OriginOptions()) as origin:
            yield origin, tmp_path / "origin"
    else:
        assert store is not None
        pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")
        s3 = store.client()
        bucket = f"tb-dirs-{os.getpid()}-{next(_COUNTER)}"
        s3.create_bucket(Bucket=bucket)
        opts = OriginOptions(ca_file=store.ca_file, endpoint_url=store.endpoint, retries=1,
                             credentials=Credentials("basic", store.secret_key,
                                                     username=store.access_key, source="test"))
        with open_origin(f"s3://{bucket}/p", opts) as origin:
            yield origin, (s3, bucket)


def _put(origin: Origin, keys: list[str]) -> None:
    for key in keys:
        data = key.encode()
        origin.put_bytes(key, data, sha256=hashlib.sha256(data).hexdigest())


def test_list_dirs_lists_one_level(kind: str, nginx: Nginx, pki: Pki, tmp_path: Path,
                                   store: RGW | None) -> None:
    with _origin(kind, nginx, pki, tmp_path, store) as (origin, _where):
        assert origin.list_dirs("releases/") == []  # nothing there yet
        _put(origin, OBJECTS)
        assert origin.list_dirs("releases/") == ["r1", "r2"]  # not "loose", an object
        assert origin.list_dirs("releases") == ["r1", "r2"]
        assert origin.list_dirs("") == ["other", "releases"]
        assert origin.list_dirs("releases/r1/") == ["linux"]
        assert origin.list_dirs("releases/r2/") == []
        assert origin.list_dirs("missing/") == []
        assert origin.list_dirs("top/") == []  # an object, not a directory
        # the full listing is unchanged
        assert origin.list("releases/") == sorted(k for k in OBJECTS
                                                  if k.startswith("releases/"))


HOSTILE_DIRS = ["a b", "x;y", "%2e%2e", "semi&&colon", "dollar${x}", ".tb-tmp.1234.x"]


def test_hostile_directory_names_are_never_listed(kind: str, nginx: Nginx, pki: Pki,
                                                  tmp_path: Path, store: RGW | None) -> None:
    with _origin(kind, nginx, pki, tmp_path, store) as (origin, where):
        _put(origin, OBJECTS)
        if kind == "s3":
            s3, bucket = where
            # keys trustboot never writes, put straight into the bucket
            for key in ["p/releases/a b/release.json", "p/releases/../release.json",
                        "p/releases//release.json", "p/releases/x;y/release.json",
                        "p/releases\\r3/release.json", "other/releases/r4/release.json",
                        "p/releasesX/r5/release.json"]:
                s3.put_object(Bucket=bucket, Key=key, Body=b"x")
        else:
            root: Path = where
            for name in HOSTILE_DIRS:
                (root / "releases" / name).mkdir()
                (root / "releases" / name / "release.json").write_bytes(b"{}")
            outside = tmp_path / "outside" / "r9"
            outside.mkdir(parents=True)
            (outside / "release.json").write_bytes(b"{}")
            if kind == "file":
                # a link planted in the origin is never followed (WebDAV: the server
                # presents its own tree, links included)
                (root / "releases" / "r9").symlink_to(outside)
        assert origin.list_dirs("releases/") == ["r1", "r2"]
        assert origin.list("releases/") == sorted(k for k in OBJECTS
                                                  if k.startswith("releases/"))


def test_a_hostile_propfind_answer_is_filtered(pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    # a WebDAV server answering with names outside the collection, deeper than one level,
    # on another host, escaping with dot segments or with characters iPXE cannot take
    from tests.publish.faultproxy import fault_proxy
    chain = nginx.base / "server-chain.pem"
    hrefs = [("/releases/", True), ("/releases/r1/", True), ("/releases/r1/deep/", True),
             ("/releases/a%20b/", True), ("/releases/%2e%2e/", True), ("/other/", True),
             ("https://evil.example/releases/r2/", True), ("/releases/.tb-tmp.1.x/", True),
             ("/releases/file", False), ("/releases/r3/", True), ("/../releases/r4/", True),
             ("/releases/r5%2f..%2f..%2fx/", True), ("/releases/%00/", True)]
    body = ('<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">' + "".join(
        f"<D:response><D:href>{h}</D:href><D:propstat><D:prop><D:resourcetype>"
        + ("<D:collection/>" if col else "") + "</D:resourcetype></D:prop></D:propstat>"
        "</D:response>" for h, col in hrefs) + "</D:multistatus>").encode()
    with fault_proxy(nginx.url, cert=chain, key=pki.key("origin"), key_password=KEY_PASS,
                     ca=pki.ca, client_cert=pki.cert("publisher"),
                     client_key=pki.key("publisher"), client_password=KEY_PASS) as (url, st):
        st.canned["PROPFIND"] = (207, body)
        opts = OriginOptions(ca_file=pki.ca, client_cert=pki.cert("publisher"),
                             client_key=pki.key("publisher"),
                             client_key_passphrase=KEY_PASS.encode(), retries=1)
        with open_origin(url, opts) as origin:
            assert origin.list_dirs("releases/") == ["r1", "r3"]
            assert sum(1 for m, _p, _s in st.seen if m == "PROPFIND") == 1


def test_s3_rerun_without_cache_finds_its_dated_id(pki: Pki, rgw: RGW,  # noqa: F811
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")
    s3 = rgw.client()
    bucket = f"tb-ids-{os.getpid()}"
    url, extra = release_origin(rgw, bucket, "TRUSTBOOT_TEST_IDS_S3", monkeypatch)
    d = tmp_path / "lab"

    def lab(kernel: int) -> Path:
        return make_lab(d, pki, url, client_cert=False, release_id="{date}-{digest8}",
                        images={"vmlinuz": kernel, "initrd.img": SMALL}, extra=extra)

    now = dt.datetime.now(dt.UTC)  # the pki was made just now
    older = _release(lab(SMALL), tmp_path / "c0.json", now=now)
    recipe = lab(SMALL + 1)
    first = _release(recipe, tmp_path / "c1.json", now=now)
    assert first.release.startswith(now.strftime("%Y%m%d-")) and first.release != older.release
    # names no release of ours has, beside the real ones
    for key in ["boot/releases/a b/release.json", "boot/releases/../release.json",
                f"boot/releases/20991231-{first.digest[:8]};x/release.json"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    # two days later, no publish cache: the same inputs keep their id, nothing uploaded
    later = _release(recipe, tmp_path / "c2.json", now=now + dt.timedelta(days=2))
    assert later.release == first.release
    assert later.uploaded == []
    options = OriginOptions(ca_file=pki.ca, endpoint_url=rgw.endpoint,
                            credentials=load_credentials(env="TRUSTBOOT_TEST_IDS_S3"))
    with open_origin(f"s3://{bucket}/boot", options) as origin:
        assert origin.list_dirs("releases/") == sorted([older.release, first.release])


def test_webdav_delete_drops_emptied_collections_without_walking_the_rest(
        pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    others = [f"releases/o{i}/linux/vmlinuz" for i in range(6)]
    with _origin("webdav", nginx, pki, tmp_path) as (origin, _root):
        _put(origin, [*others, "releases/r1/linux/vmlinuz", "releases/r1/release.json"])
        origin.delete("releases/r1/linux/vmlinuz")
        assert not (nginx.root / "releases/r1/linux").exists()  # emptied: dropped
        assert (nginx.root / "releases/r1/release.json").is_file()
        requests = logged_requests(nginx, pki, lambda: origin.delete("releases/r1/release.json"))
        assert not (nginx.root / "releases/r1").exists()
        # whether r1/ is now empty: one look; releases/, a top-level collection, is never
        # deleted (so never looked at), let alone walked with its six other releases
        propfinds = [r.split()[1] for r in requests if r.startswith("PROPFIND ")]
        assert len(propfinds) <= 1, propfinds
        assert origin.list_dirs("releases/") == [f"o{i}" for i in range(6)]
        for key in others:
            origin.delete(key)
        # a listing that wrongly said "empty" must not cost more than the deleted release:
        # the emptied releases/ stays, holding nothing
        assert (nginx.root / "releases").is_dir()
        assert not any((nginx.root / "releases").iterdir())
        assert origin.list("") == []
