"""Release folders without a release.json (a publish killed before writing it, an upload
whose folder stayed) on every backend: ``Origin.folder_age`` tells how long nothing in
one changed (file://: mtimes; nginx WebDAV: getlastmodified; Ceph RGW: LastModified by
the store's clock), ``Origin.remove_empty_folder`` removes one that holds nothing, and
prune removes those older than its limit and leaves the young ones, saying why.
(The flow through repair and resign, and what prune never removes, are in
test_switch_repair.py.)"""

from __future__ import annotations

import http.server
import os
import time
from pathlib import Path

import pytest

from tests.publish.conftest import Nginx, Pki, http_server
from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from tests.publish.test_list_dirs import _origin, _put
from trustboot.publish.origin import OriginOptions
from trustboot.publish.pipeline import STALE_TEMP_AGE, prune
from trustboot.publish.webdav import WebDAVOrigin

RK = ["releases/rk/vmlinuz", "releases/rk/vmlinuz.sig", "releases/rk/linux/initrd"]


def _backdate(folder: Path, seconds: float) -> None:
    """Everything in ``folder``, the folder included, last changed ``seconds`` ago."""
    then = time.time() - seconds
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (then, then), follow_symlinks=False)


def test_prune_removes_old_folders_without_a_manifest_and_leaves_young_ones(
        kind: str, store: RGW | None, nginx: Nginx, pki: Pki, tmp_path: Path) -> None:
    with _origin(kind, nginx, pki, tmp_path, store) as (origin, where):
        _put(origin, RK)
        assert origin.folder_age("releases/missing/") is None
        if kind == "s3":
            # nothing to backdate in a bucket: a limit of seconds, by the store's clock
            limit = 2.0
            removed = ["rk"]
            time.sleep(limit + 1)
        else:
            limit = STALE_TEMP_AGE
            removed = ["re", "rk"]
            (where / "releases/re").mkdir()  # a folder made, its upload never came
            _backdate(where / "releases/rk", 7200)
            _backdate(where / "releases/re", 7200)
        _put(origin, ["releases/ry/vmlinuz"])
        with origin.lock("test"):
            old, young = origin.folder_age("releases/rk/"), origin.folder_age("releases/ry/")
        assert old is not None and old >= limit, old
        assert young is not None and young < limit, young

        result = prune(origin, keep=1, incomplete_age=limit)
        assert result.deleted == []
        assert result.incomplete_removed == removed
        assert list(result.incomplete_left) == ["ry"]
        assert "a publish may be under way" in result.incomplete_left["ry"]
        assert origin.list_dirs("releases/") == ["ry"]
        assert origin.list("releases/") == ["releases/ry/vmlinuz"]
        if kind != "s3":
            assert not (where / "releases/rk").exists() and not (where / "releases/re").exists()


@pytest.mark.parametrize("kind", ["file", "webdav"])
def test_a_folder_is_removed_only_when_it_holds_nothing(
        kind: str, nginx: Nginx, pki: Pki, tmp_path: Path) -> None:
    """remove_empty_folder never takes what is inside (a WebDAV DELETE of a collection
    would take all of it): a folder holding anything, even a name `list` leaves out, stays."""
    with _origin(kind, nginx, pki, tmp_path) as (origin, where):
        _put(origin, ["releases/rk/vmlinuz"])
        (where / "releases/rh").mkdir()
        (where / "releases/rh/a b").write_bytes(b"not a key trustboot writes")
        with origin.lock("test"):
            assert origin.remove_empty_folder("releases/rk/") is False
            assert origin.remove_empty_folder("releases/rh/") is False
            assert origin.remove_empty_folder("releases/missing/") is True
            (where / "releases/re").mkdir()
            assert origin.remove_empty_folder("releases/re/") is True
        assert (where / "releases/rk/vmlinuz").is_file()
        assert (where / "releases/rh/a b").is_file()
        assert not (where / "releases/re").exists()


class _Undated(http.server.BaseHTTPRequestHandler):
    """A WebDAV server whose listing of /releases/rk/ dates the folder and one object but
    not the other (getlastmodified is optional in WebDAV), and dates all of /releases/ro/."""

    protocol_version = "HTTP/1.1"

    def do_PROPFIND(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        old = "<getlastmodified>Mon, 01 Jan 2001 00:00:00 GMT</getlastmodified>"
        base = self.path.rstrip("/")
        undated = "rk" in base
        body = ('<?xml version="1.0"?><multistatus xmlns="DAV:">'
                + "".join(f"<response><href>{href}</href><propstat><prop>{kind}{when}"
                          "</prop></propstat></response>" for href, kind, when in [
                              (base + "/", "<resourcetype><collection/></resourcetype>", old),
                              (base + "/vmlinuz", "<resourcetype/>", old),
                              (base + "/vmlinuz.sig", "<resourcetype/>",
                               "" if undated else old),
                              # another server's name: not this folder's age
                              ("https://elsewhere.example/x", "<resourcetype/>", "")])
                + "</multistatus>").encode()
        self.send_response(207)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_folder_whose_age_the_origin_does_not_tell_has_no_age() -> None:
    """One undated entry and the folder's age cannot be told: None (prune leaves such a
    folder, "its age cannot be told"), never the age of the entries that are dated."""
    with http_server(_Undated) as url, WebDAVOrigin(url, OriginOptions(
            unsafe_http=True, unsafe_no_verify=True, timeout=2.0, retries=0)) as origin:
        assert origin.folder_age("releases/rk/") is None
        age = origin.folder_age("releases/ro/")
        assert age is not None and age > 20 * 365 * 86400, age
