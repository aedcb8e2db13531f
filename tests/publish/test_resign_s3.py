"""`trustboot resign` on a real Ceph RGW (S3): server-side CopyObject for the data, new
signatures and manifest, read back over HTTPS, switch; a tampered live object is refused."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner, Result

pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")

from tests.publish.conftest import Pki, ReleaseFactory
from tests.publish.rgw import RGW, anon_get, rgw  # noqa: F401  (the session fixture)
from tests.publish.test_resign import entry
from trustboot.cli.main import cli

CREDS_ENV = "TB_TEST_S3_CREDENTIALS"


def _run(rgw: RGW, pki: Pki, *args: str) -> Result:  # noqa: F811
    return CliRunner().invoke(cli, [*args, "--pki", str(pki.dir), "--endpoint-url",
                                    rgw.endpoint, "--credentials-env", CREDS_ENV, "--json"])


def test_resign_on_rgw(rgw: RGW, pki: Pki, make_release: ReleaseFactory,  # noqa: F811
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CREDS_ENV, f"{rgw.access_key}:{rgw.secret_key}")
    s3 = rgw.client()
    bucket = f"tb-resign-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    origin, base = f"s3://{bucket}/boot", f"{rgw.endpoint}/{bucket}/boot/"
    kernel = os.urandom(150_000)
    rel = make_release({"boot.ipxe": entry("g1", base), "vmlinuz": kernel})
    assert _run(rgw, pki, "publish", str(rel), origin, "--release-id", "g1").exit_code == 0
    pki.issue("codesign", "fresh-s3", "--days", "7")
    key = ("--key", "fresh-s3", "--passphrase-file", str(pki.key_pass))
    # tampered on the store: refused, nothing changed
    good = s3.get_object(Bucket=bucket, Key="boot/releases/g1/vmlinuz")
    # (the first byte flipped: a fixed one would equal the random one once in 256 runs)
    s3.put_object(Bucket=bucket, Key="boot/releases/g1/vmlinuz",
                  Body=bytes([kernel[0] ^ 0xFF]) + kernel[1:],
                  Metadata=good["Metadata"], ACL="public-read")
    before = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    bad = _run(rgw, pki, "resign", origin, *key)
    assert bad.exit_code == 4, bad.output
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == before
    s3.put_object(Bucket=bucket, Key="boot/releases/g1/vmlinuz", Body=kernel,
                  Metadata=good["Metadata"], ACL="public-read")
    res = _run(rgw, pki, "resign", origin, *key)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    new = out["release"]
    assert out["copied"] == ["vmlinuz"] and out["rewritten"] == ["boot.ipxe"]
    status, _, served = anon_get(base + "boot.ipxe", rgw.ca_file)
    assert status == 200 and f"releases/{new}/vmlinuz".encode() in served
    assert anon_get(f"{base}releases/{new}/vmlinuz", rgw.ca_file)[2] == kernel
    again = _run(rgw, pki, "resign", origin, *key)
    assert again.exit_code == 0 and not json.loads(again.output)["changed"]
