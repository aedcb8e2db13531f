"""Prune removes an old release whole or leaves it whole, on every backend (file://, nginx
WebDAV over TLS, Ceph RGW): a folder that also holds names trustboot does not list or write
(which no delete of ours takes) keeps its release.json and objects and is reported with the
reason; and a prune the origin cuts off says exactly what it left, and the same prune run
again finishes the job."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Nginx, Pki, ReleaseFactory
from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from tests.publish.test_lock import webdav_options
from trustboot.cli.main import cli
from trustboot.publish.origin import open_origin
from trustboot.publish.pipeline import prune

CREDS_ENV = "TB_TEST_S3_CREDENTIALS"
_BUCKETS = iter(range(1000))


class Site:
    """An origin of one kind, the CLI options that reach it, and a way to put a name in
    it behind trustboot's back (a file in the directory nginx serves, an S3 key)."""

    def __init__(self, kind: str, pki: Pki, nginx: Nginx, tmp_path: Path, store: RGW | None,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.kind, self.args = kind, ["--pki", str(pki.dir), "--json"]
        if kind == "file":
            self.url, self.root = f"file://{tmp_path}/srv", tmp_path / "srv"
        elif kind == "webdav":
            self.url, self.root = nginx.url, nginx.root
            self.args += ["--client-cert", "publisher", "--client-key-passphrase-file",
                          str(pki.key_pass)]
        else:
            assert store is not None
            monkeypatch.setenv(CREDS_ENV, f"{store.access_key}:{store.secret_key}")
            self.s3, self.bucket = store.client(), f"tb-whole-{os.getpid()}-{next(_BUCKETS)}"
            self.s3.create_bucket(Bucket=self.bucket)
            self.url = f"s3://{self.bucket}/boot"
            self.args += ["--endpoint-url", store.endpoint, "--credentials-env", CREDS_ENV]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, [*args, *self.args])

    def put(self, key: str) -> None:
        if self.kind == "s3":
            self.s3.put_object(Bucket=self.bucket, Key=f"boot/{key}", Body=b"not ours")
        else:
            (self.root / key).write_bytes(b"not ours")

    def remove(self, key: str) -> None:
        if self.kind == "s3":
            self.s3.delete_object(Bucket=self.bucket, Key=f"boot/{key}")
        else:
            (self.root / key).unlink()

    def keys(self, prefix: str) -> list[str]:
        if self.kind == "s3":
            listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"boot/{prefix}")
            return sorted(o["Key"][len("boot/"):] for o in listed.get("Contents", []))
        return sorted(str(p.relative_to(self.root)) for p in (self.root / prefix).rglob("*")
                      if not p.is_dir())


def two_releases(site: Site, make_release: ReleaseFactory) -> list[str]:
    """r1 then r2 (live) published; r1's keys."""
    for i in (1, 2):
        d = make_release({"boot.ipxe": f"#!ipxe\necho {i}\n".encode(), "vmlinuz": b"k" * 999})
        r = site.run("publish", str(d), site.url, "--release-id", f"r{i}")
        assert r.exit_code == 0, r.output
        time.sleep(1.1)  # distinct creation times
    return site.keys("releases/r1/")


def test_a_release_whose_folder_holds_names_trustboot_does_not_write_is_left_whole(
        kind: str, store: RGW | None, pki: Pki, nginx: Nginx, tmp_path: Path,
        make_release: ReleaseFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    site = Site(kind, pki, nginx, tmp_path, store, monkeypatch)
    r1 = two_releases(site, make_release)
    assert "releases/r1/release.json" in r1
    site.put("releases/r1/a b")  # a name check_key refuses: never listed, never deleted

    pruned = site.run("publish", "prune", site.url, "--keep", "1")
    assert pruned.exit_code == 0, pruned.output
    out = json.loads(pruned.stdout)
    assert out["deleted"] == [] and out["incomplete_left"] == [], out
    [left] = out["left"]
    assert left["release"] == "r1", out
    assert "'releases/r1/a b'" in left["reason"] and "nothing of it was deleted" in left["reason"]
    assert site.keys("releases/r1/") == sorted([*r1, "releases/r1/a b"])  # all still there
    listed = json.loads(site.run("publish", "list", site.url).stdout)
    assert [(i["id"], i["complete"]) for i in listed] == [("r1", True), ("r2", True)]
    human = CliRunner().invoke(cli, ["publish", "prune", site.url, "--keep", "1",
                                     *[a for a in site.args if a != "--json"]])
    assert human.exit_code == 0 and "left release r1: its folder also holds" in human.output

    site.remove("releases/r1/a b")  # moved out, as the reason says: the next prune deletes it
    again = site.run("publish", "prune", site.url, "--keep", "1")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["deleted"] == ["r1"]
    assert site.keys("releases/r1/") == [] and site.keys("releases/r2/")
    if kind != "s3":
        assert not (site.root / "releases/r1").exists()


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` made immutable (chattr +i: not even root, nginx here, can unlink it)."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"needs chattr +i on the test filesystem: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("kind", ["webdav"])
def test_a_prune_the_origin_cuts_off_says_what_it_left_and_the_next_one_finishes(
        kind: str, pki: Pki, nginx: Nginx, tmp_path: Path, make_release: ReleaseFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dot-file nginx hides from PROPFIND and cannot delete: the release's objects and
    release.json go, the DELETE of its folder fails. Unavoidable (nothing showed it), so
    the error says exactly what is left; the next prune leaves the folder with the reason
    instead of failing as a whole; once the file can go, prune removes the folder."""
    site = Site(kind, pki, nginx, tmp_path, None, monkeypatch)
    two_releases(site, make_release)
    hidden = nginx.root / "releases/r1/.hidden"
    hidden.write_bytes(b"not ours")
    with immutable(hidden):
        failed = site.run("publish", "prune", site.url, "--keep", "1")
        assert failed.exit_code == 1, failed.output
        err = json.loads(failed.stderr)
        assert "pruning release r1 " in err["message"], err
        assert "left of it: nothing the origin lists" in err["message"], err
        assert "release.json is gone" in err["message"], err
        assert "run the same prune again" in err["hint"], err
        assert sorted(p.name for p in (nginx.root / "releases/r1").iterdir()) == [".hidden"]

        with open_origin(nginx.url, webdav_options(pki)) as origin:
            result = prune(origin, keep=1, incomplete_age=0)
        assert result.deleted == [] and result.left == {}
        assert "removing it failed" in result.incomplete_left["r1"], result
    with open_origin(nginx.url, webdav_options(pki)) as origin:
        result = prune(origin, keep=1, incomplete_age=0)
    assert result.incomplete_removed == ["r1"] and not (nginx.root / "releases/r1").exists()


@pytest.mark.parametrize("kind", ["s3"])
def test_prune_without_the_multipart_listing_permission_still_prunes(
        kind: str, store: RGW | None, pki: Pki, nginx: Nginx, tmp_path: Path,
        make_release: ReleaseFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket policy that denies s3:ListBucketMultipartUploads (RGW enforces it, the
    bucket owner included): the old complete release is still deleted; a folder without
    release.json, whose age needs that listing (an upload under way has no object yet),
    is left with the reason naming the permission, and a warning says so (exit 0, as
    for every folder prune leaves)."""
    site = Site(kind, pki, nginx, tmp_path, store, monkeypatch)
    two_releases(site, make_release)
    site.put("releases/rk/vmlinuz")  # a killed publish's folder: no release.json
    site.s3.put_bucket_policy(Bucket=site.bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": {"AWS": ["*"]},
                       "Action": ["s3:ListBucketMultipartUploads"],
                       "Resource": [f"arn:aws:s3:::{site.bucket}"]}]}))
    with pytest.raises(Exception, match="AccessDenied"):  # the policy really applies
        site.s3.list_multipart_uploads(Bucket=site.bucket)

    pruned = site.run("publish", "prune", site.url, "--keep", "1")
    assert pruned.exit_code == 0, pruned.output
    out = json.loads(pruned.stdout)
    assert out["deleted"] == ["r1"] and out["left"] == [], out
    [left] = out["incomplete_left"]
    assert left["release"] == "rk" and "its age cannot be told" in left["reason"], out
    assert "s3:ListBucketMultipartUploads" in left["reason"], out
    [warning] = out["warnings"]
    assert "s3:ListBucketMultipartUploads" in warning, out
    assert "warning: " in pruned.stderr and "ListMultipartUploads" in pruned.stderr
    assert site.keys("releases/r1/") == [] and site.keys("releases/rk/") == [
        "releases/rk/vmlinuz"]
    assert site.keys("releases/r2/")
