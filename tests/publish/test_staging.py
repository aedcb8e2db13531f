"""Origins that stage a file while it is hashed (origin.StagingOrigin), against nginx
WebDAV over TLS and a file:// directory: one read gives the digests and the uploaded
bytes; a file changed during that read leaves nothing behind; a staged object is served
under its key only once placed; a discarded one is gone. A release to Ceph RGW (S3, no
cheap server-side move) keeps hash-then-upload (here, not in tests/release: the RGW
fixture is shared by the whole session and must start with this directory's pki)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.publish.conftest import KEY_PASS, Nginx, Pki, anon_get
from tests.publish.rgw import RGW, release_origin, rgw  # noqa: F401  (the session fixture)
from tests.release.lab import make_lab
from tests.release.test_staging import BIG, SMALL, _release
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish import stream
from trustboot.publish.origin import (
    OriginOptions,
    StagingOrigin,
    load_credentials,
    open_origin,
    staging_of,
)


@contextmanager
def _origin(kind: str, nginx: Nginx, pki: Pki, tmp_path: Path) -> Iterator[StagingOrigin]:
    if kind == "webdav":
        opts = OriginOptions(ca_file=pki.ca, client_cert=pki.cert("publisher"),
                             client_key=pki.key("publisher"),
                             client_key_passphrase=KEY_PASS.encode())
        url = nginx.url
    else:
        opts = OriginOptions()
        url = f"file://{tmp_path / 'origin'}"
    with open_origin(url, opts) as origin:
        stager = staging_of(origin)
        assert stager is not None
        yield stager


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["webdav", "file"])
def test_stage_place_and_discard(kind: str, nginx: Nginx, pki: Pki, tmp_path: Path) -> None:
    root = nginx.root if kind == "webdav" else tmp_path / "origin"
    data = os.urandom(3 * stream.CHUNK + 17)
    f = tmp_path / "initrd.img"
    f.write_bytes(data)
    with _origin(kind, nginx, pki, tmp_path) as origin:
        staged = origin.stage_file(f, name="linux/initrd.img", hash_names={"sha384"})
        assert staged.size == len(data)
        assert staged.digests == {"sha256": hashlib.sha256(data).digest(),
                                  "sha384": hashlib.sha384(data).digest()}
        assert staged.stamp.st_ino == f.stat().st_ino
        # staged: under a temporary name only, never under a release key
        assert [p for p in _files(root) if not p.startswith(".tb-tmp.")] == []
        origin.place_staged(staged, "releases/r1/linux/initrd.img")
        assert (root / "releases/r1/linux/initrd.img").read_bytes() == data
        assert [p for p in _files(root) if ".tb-tmp." in p] == []
        with pytest.raises(ValueError, match="not a pending staged object"):
            origin.place_staged(staged, "releases/r1/linux/again.img")
        gone = origin.stage_file(f, name="linux/initrd.img", hash_names=())
        assert len(_files(root)) == 2
        origin.discard_staged(gone)
        origin.discard_staged(gone)  # twice is fine
        assert _files(root) == ["releases/r1/linux/initrd.img"]
    if kind == "webdav":
        assert anon_get(nginx.url + "releases/r1/linux/initrd.img", pki).content == data


@pytest.mark.parametrize("kind", ["webdav", "file"])
def test_file_changed_while_staged_leaves_nothing(kind: str, nginx: Nginx, pki: Pki,
                                                  tmp_path: Path) -> None:
    root = nginx.root if kind == "webdav" else tmp_path / "origin"
    f = tmp_path / "initrd.img"
    f.write_bytes(os.urandom(12 * stream.CHUNK))  # more chunks than the read-ahead holds

    def change(_n: int) -> None:
        # the first chunk is out: the reader has not reached the end of the file yet
        if f.stat().st_size == 12 * stream.CHUNK:
            with open(f, "ab") as fh:
                fh.write(b"appended")

    with _origin(kind, nginx, pki, tmp_path) as origin:
        with pytest.raises(OperationalError, match=r"changed while it was read"):
            origin.stage_file(f, name="linux/initrd.img", hash_names=(), progress=change)
        assert _files(root) == []
        # rewritten in place (same size): the stamp (mtime/ctime) gives it away
        f.write_bytes(os.urandom(12 * stream.CHUNK))

        def rewrite(_n: int) -> None:
            if not getattr(rewrite, "done", False):
                rewrite.done = True  # type: ignore[attr-defined]
                with open(f, "r+b") as fh:
                    fh.write(b"X")

        with pytest.raises(OperationalError, match=r"changed while it was read"):
            origin.stage_file(f, name="linux/initrd.img", hash_names=(), progress=rewrite)
        assert _files(root) == []


@pytest.mark.parametrize("kind", ["webdav", "file"])
@pytest.mark.parametrize("name", ["../escape.img", "/abs.img", "linux/a b.img", "a//b", ""])
def test_a_bad_name_is_refused_before_reading(kind: str, name: str, nginx: Nginx, pki: Pki,
                                               tmp_path: Path) -> None:
    # the key check comes first on every backend: no read, no temporary object
    root = nginx.root if kind == "webdav" else tmp_path / "origin"
    read: list[int] = []
    f = tmp_path / "initrd.img"
    f.write_bytes(b"x" * 100)
    with _origin(kind, nginx, pki, tmp_path) as origin:
        with pytest.raises(ConfigError, match="is refused"):
            origin.stage_file(f, name=name, hash_names=(), progress=read.append)
    assert read == []
    assert _files(root) == []


def test_a_fifo_or_missing_file_is_refused(nginx: Nginx, pki: Pki, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with _origin("webdav", nginx, pki, tmp_path) as origin:
        with pytest.raises(OperationalError, match="no longer a regular file"):
            origin.stage_file(fifo, name="linux/initrd.img", hash_names=())
        with pytest.raises(OperationalError, match="cannot read"):
            origin.stage_file(tmp_path / "missing", name="linux/initrd.img", hash_names=())
    assert _files(nginx.root) == []


def test_s3_origin_keeps_hash_then_upload(pki: Pki, rgw: RGW, tmp_path: Path,  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")
    s3 = rgw.client()
    bucket = f"tb-staging-{os.getpid()}"
    url, extra = release_origin(rgw, bucket, "TRUSTBOOT_TEST_STAGING_S3", monkeypatch)
    recipe = make_lab(tmp_path / "lab", pki, url, client_cert=False,
                      images={"vmlinuz": SMALL, "initrd.img": BIG}, extra=extra)
    result = _release(recipe, tmp_path / "cache.json")
    assert not any("staged on the origin" in s["detail"] for s in result.stages)
    assert {"linux/initrd.img", "linux/vmlinuz"} <= set(result.uploaded)
    key = f"boot/releases/{result.release}/linux/initrd.img"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == \
        (tmp_path / "lab/images/initrd.img").read_bytes()
    # an S3 store has no cheap server-side move (a copy writes the data again)
    options = OriginOptions(ca_file=pki.ca, endpoint_url=rgw.endpoint,
                            credentials=load_credentials(env="TRUSTBOOT_TEST_STAGING_S3"))
    with open_origin(f"s3://{bucket}/boot", options) as origin:
        assert staging_of(origin) is None


def test_origin_answering_put_before_the_whole_body_is_refused(nginx: Nginx, pki: Pki,
                                                               tmp_path: Path) -> None:
    """A hostile server (or a middlebox) answers 201 to the staging PUT before reading the
    body and closes: httpx then returns the 201 with the file only partly read. That is an
    upload that did not happen (an origin error, exit 1), never a Staged record without
    digests (an internal error) or one left from an earlier attempt."""
    from tests.publish.faultproxy import fault_proxy

    f = tmp_path / "initrd.img"
    f.write_bytes(os.urandom(16 * stream.CHUNK))
    chain = nginx.base / "server-chain.pem"
    with fault_proxy(nginx.url, cert=chain, key=pki.key("origin"), key_password=KEY_PASS,
                     ca=pki.ca, client_cert=pki.cert("publisher"),
                     client_key=pki.key("publisher"), client_password=KEY_PASS) as (url, st):
        st.early["PUT"] = 201
        opts = OriginOptions(ca_file=pki.ca, retries=0)
        with open_origin(url, opts) as origin:
            stager = staging_of(origin)
            assert stager is not None
            with pytest.raises(OperationalError, match="before it received the whole body"):
                stager.stage_file(f, name="linux/initrd.img", hash_names=())
            # a plain upload is refused the same way, before any MOVE into place
            with pytest.raises(OperationalError, match="before it received the whole body"):
                origin.put_file("releases/r1/linux/initrd.img", f, size=f.stat().st_size,
                                sha256=hashlib.sha256(f.read_bytes()).hexdigest())
        assert not any(m == "MOVE" for m, _p, _s in st.seen)
