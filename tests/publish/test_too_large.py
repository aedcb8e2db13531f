"""An object larger than its read cap is a TooLarge error on every origin and in the
read-back Reader, and the read-back of a release reports it as "serves more than
published" (by the type, not by the text of the error)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.publish.conftest import Nginx, Pki, ReleaseFactory
from tests.publish.test_faults import options_of, publish, trust_of
from trustboot.cli.main import cli
from trustboot.cms.verify import MAX_SIGNATURE_SIZE
from trustboot.errors import VerificationError
from trustboot.publish.manifest import parse_manifest
from trustboot.publish.origin import Origin, OriginOptions, TooLarge, open_origin
from trustboot.publish.pipeline import verify_served
from trustboot.publish.readback import Reader

ENTRY = b"#!ipxe\necho too large\n"
KERNEL = b"k" * 4096


def test_file_origin_read_over_its_cap_is_too_large(tmp_path: Path) -> None:
    with open_origin(f"file://{tmp_path}/o", OriginOptions()) as origin:
        origin.put_bytes("a", b"hello", sha256=hashlib.sha256(b"hello").hexdigest())
        with pytest.raises(TooLarge, match="larger than 4 bytes"):
            b"".join(origin.read("a", max_size=4))


def test_webdav_read_over_its_cap_is_too_large(pki: Pki, nginx: Nginx) -> None:
    with open_origin(nginx.url, options_of(pki)) as origin:
        origin.put_bytes("a", b"hello", sha256=hashlib.sha256(b"hello").hexdigest())
        assert b"".join(origin.read("a", max_size=5)) == b"hello"
        with pytest.raises(TooLarge, match="larger than 4 bytes"):
            b"".join(origin.read("a", max_size=4))


def test_reader_over_its_cap_is_too_large(pki: Pki, nginx: Nginx) -> None:
    (nginx.root / "a").write_bytes(b"hello")
    with Reader(ca_file=pki.ca) as reader:
        with pytest.raises(TooLarge, match="larger than 4 bytes"):
            reader.stream(nginx.url + "a", max_size=4)
        with pytest.raises(TooLarge, match="larger than 4 bytes"):
            reader.fetch(nginx.url + "a", max_size=4)


def _served_grown(origin: Origin, root: Path, pki: Pki, reader: Reader | None) -> str:
    """Append to the published kernel, read the release back: the problem reported."""
    with open(root / "releases/r1/vmlinuz", "ab") as fh:
        fh.write(b"x")
    manifest = parse_manifest((root / "releases/r1/release.json").read_bytes())
    with pytest.raises(VerificationError) as err:
        verify_served(origin, manifest, trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                      reader=reader)
    assert err.value.exit_code == 4
    assert err.value.hint is not None and err.value.hint.startswith(
        "nothing was switched; find out who changed the origin")
    return err.value.message


def test_readback_from_the_store_names_an_object_served_larger(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    r = make_release({"boot.ipxe": ENTRY, "vmlinuz": KERNEL})
    url = f"file://{tmp_path}/srv"
    assert publish(pki, r, url, "r1", "--no-switch").exit_code == 0
    with open_origin(url, OriginOptions()) as origin:
        message = _served_grown(origin, tmp_path / "srv", pki, None)
    assert message == (f"release r1 on {url}/ is not served as published: releases/r1/"
                       "vmlinuz: the origin serves more than the 4096 bytes published")


def test_readback_over_https_names_an_object_served_larger(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    r = make_release({"boot.ipxe": ENTRY, "vmlinuz": KERNEL})
    assert publish(pki, r, nginx.url, "r1", "--no-switch").exit_code == 0
    with open_origin(nginx.url, options_of(pki)) as origin, Reader(ca_file=pki.ca) as reader:
        message = _served_grown(origin, nginx.root, pki, reader)
    assert message.endswith("releases/r1/vmlinuz: the origin serves more than the 4096 "
                            "bytes published")


@pytest.mark.parametrize("sig", ["vmlinuz.sig", "release.json.sig"])
def test_a_served_signature_over_the_cap_does_not_verify(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory, sig: str) -> None:
    """A .sig the origin serves larger than iPXE takes (it copies the whole .sig into its
    4 MiB heap) is "what the origin serves does not verify", exit 4 like any other
    read-back mismatch, naming the URL and the cap (not exit 1, an I/O failure)."""
    r = make_release({"boot.ipxe": ENTRY, "vmlinuz": KERNEL})
    assert publish(pki, r, nginx.url, "r1").exit_code == 0
    (nginx.root / "releases/r1" / sig).write_bytes(b"\x30" * (MAX_SIGNATURE_SIZE + 1))
    res = CliRunner().invoke(cli, ["publish", "rollback", nginx.url, "r1", "--pki",
                                   str(pki.dir), "--client-cert", "publisher",
                                   "--client-key-passphrase-file", str(pki.key_pass),
                                   "--json"])
    assert res.exit_code == 4, res.output
    err = json.loads(res.stderr)
    assert f"{nginx.url}releases/r1/{sig} is larger than {MAX_SIGNATURE_SIZE} bytes" \
        in err["message"]
    assert "iPXE" in err["message"]


def test_reader_caps_the_signature_of_a_pair_at_ipxes_limit(pki: Pki, nginx: Nginx) -> None:
    """verify_pair (origin check, the release's verify stage) reads a .sig only up to the
    4 MiB iPXE accepts: an origin serving a larger one is cut off by the read cap, not
    downloaded whole and then judged oversized."""
    (nginx.root / "pair.ipxe").write_bytes(ENTRY)
    (nginx.root / "pair.ipxe.sig").write_bytes(b"\x30" * (MAX_SIGNATURE_SIZE + 1))
    with Reader(ca_file=pki.ca) as reader:
        with pytest.raises(TooLarge, match=f"larger than {MAX_SIGNATURE_SIZE} bytes"):
            reader.verify_pair(nginx.url + "pair.ipxe", nginx.url + "pair.ipxe.sig",
                               trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                               max_size=1 << 20)
