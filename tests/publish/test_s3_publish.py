"""`trustboot publish` to a real Ceph RGW end to end: upload, read back over HTTPS as iPXE
would, verify, switch, resume with nothing to upload, roll back, refuse a tampered release."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")

from tests.publish.conftest import KEY_PASS, Pki, ReleaseFactory
from tests.publish.rgw import RGW, anon_get, rgw  # noqa: F401  (the session fixture)
from trustboot.cli.main import cli

ENTRY1 = b"#!ipxe\necho release one\n"
ENTRY2 = b"#!ipxe\necho release two\n"
CREDS_ENV = "TB_TEST_S3_CREDENTIALS"


@pytest.fixture
def s3_env(rgw: RGW, monkeypatch: pytest.MonkeyPatch) -> RGW:  # noqa: F811
    monkeypatch.setenv(CREDS_ENV, f"{rgw.access_key}:{rgw.secret_key}")
    return rgw


@dataclass
class Target:
    """A fresh bucket on the session's RGW and the origin URL into it (prefix 'boot')."""

    rgw: RGW
    s3: Any
    bucket: str
    origin: str
    base: str  # the public HTTPS URL of the origin's root


_BUCKETS = iter(range(1000))


@pytest.fixture
def target(s3_env: RGW) -> Target:
    s3 = s3_env.client()
    bucket = f"tb-publish-{os.getpid()}-{next(_BUCKETS)}"
    s3.create_bucket(Bucket=bucket)
    return Target(s3_env, s3, bucket, f"s3://{bucket}/boot",
                  f"{s3_env.endpoint}/{bucket}/boot/")


def cli_run(rgw: RGW, pki: Pki, *args: str) -> Result:  # noqa: F811
    return CliRunner().invoke(cli, [
        *args, "--pki", str(pki.dir), "--endpoint-url", rgw.endpoint, "--credentials-env",
        CREDS_ENV, "--json"])


def openssl_verifies(data: bytes, sig: bytes, ca: Path, tmp: Path) -> bool:
    """An independent check of what the store serves: openssl's CMS verifier."""
    (tmp / "d").write_bytes(data)
    (tmp / "d.sig").write_bytes(sig)
    r = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                        str(tmp / "d.sig"), "-content", str(tmp / "d"), "-CAfile", str(ca),
                        "-purpose", "any", "-out", os.devnull], capture_output=True)
    return r.returncode == 0


def test_publish_to_rgw_end_to_end(target: Target, pki: Pki, make_release: ReleaseFactory,
                                   tmp_path: Path) -> None:
    rgw, s3, bucket, origin, base = (target.rgw, target.s3, target.bucket,  # noqa: F811
                                     target.origin, target.base)

    r1 = make_release({"boot.ipxe": ENTRY1, "vmlinuz": os.urandom(200_000)})
    res = cli_run(rgw, pki, "publish", str(r1), origin, "--release-id", "r1",
                  "--signer", "boot-signer")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["switched"] and out["readback"] == "https"
    assert sorted(out["uploaded"]) == ["boot.ipxe", "boot.ipxe.sig", "release.json", "vmlinuz",
                                       "vmlinuz.sig"]
    # what any booting client gets, anonymously over HTTPS with the private CA
    status, _, entry = anon_get(base + "boot.ipxe", rgw.ca_file)
    assert (status, entry) == (200, ENTRY1)
    sig = anon_get(base + "boot.ipxe.sig", rgw.ca_file)[2]
    assert openssl_verifies(entry, sig, pki.ca, tmp_path)
    kernel = anon_get(base + "releases/r1/vmlinuz", rgw.ca_file)[2]
    assert kernel == (r1 / "vmlinuz").read_bytes()
    assert openssl_verifies(kernel, anon_get(base + "releases/r1/vmlinuz.sig", rgw.ca_file)[2],
                            pki.ca, tmp_path)

    # the same release again: nothing to upload (sha256 from the object metadata)
    again = cli_run(rgw, pki, "publish", str(r1), origin, "--release-id", "r1")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["uploaded"] == []

    r2 = make_release({"boot.ipxe": ENTRY2, "vmlinuz": os.urandom(100_000)})
    res = cli_run(rgw, pki, "publish", str(r2), origin, "--release-id", "r2")
    assert res.exit_code == 0, res.output
    assert anon_get(base + "boot.ipxe", rgw.ca_file)[2] == ENTRY2
    # an id that exists with other content is refused
    clash = cli_run(rgw, pki, "publish", str(r2), origin, "--release-id", "r1")
    assert clash.exit_code != 0 and anon_get(base + "boot.ipxe", rgw.ca_file)[2] == ENTRY2

    listed = cli_run(rgw, pki, "publish", "list", origin)
    assert listed.exit_code == 0, listed.output
    infos = {i["id"]: i for i in json.loads(listed.output)}
    assert infos["r2"]["live"] and not infos["r1"]["live"]

    rb = cli_run(rgw, pki, "publish", "rollback", origin, "r1")
    assert rb.exit_code == 0, rb.output
    assert anon_get(base + "boot.ipxe", rgw.ca_file)[2] == ENTRY1
    assert anon_get(base + "boot.ipxe.sig", rgw.ca_file)[2] == (r1 / "boot.ipxe.sig").read_bytes()

    # a release altered on the store after upload is caught before any switch
    r3 = make_release({"boot.ipxe": b"#!ipxe\necho three\n", "vmlinuz": b"k3" * 5000})
    res = cli_run(rgw, pki, "publish", str(r3), origin, "--release-id", "r3", "--no-switch")
    assert res.exit_code == 0, res.output
    s3.put_object(Bucket=bucket, Key="boot/releases/r3/vmlinuz", Body=b"evil" * 2500,
                  ACL="public-read")
    bad = cli_run(rgw, pki, "publish", "rollback", origin, "r3")
    assert bad.exit_code == 4, bad.output
    assert anon_get(base + "boot.ipxe", rgw.ca_file)[2] == ENTRY1  # still r1

    pr = cli_run(rgw, pki, "publish", "prune", origin, "--keep", "1")
    assert pr.exit_code == 0, pr.output
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "boot/releases/r1/vmlinuz" in keys  # the live release is never pruned
    # no lock left behind (the live record stays: which release boot.ipxe serves)
    assert {k for k in keys if k.startswith("boot/.trustboot")} == {"boot/.trustboot-live.json"}


def test_publish_with_a_wrong_secret_fails_cleanly(s3_env: RGW, pki: Pki,
                                                   make_release: ReleaseFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rgw = s3_env  # noqa: F811
    bucket = f"tb-publish-bad-{os.getpid()}"
    rgw.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv(CREDS_ENV, f"{rgw.access_key}:not-the-secret")
    r1 = make_release({"boot.ipxe": ENTRY1})
    res = cli_run(rgw, pki, "publish", str(r1), f"s3://{bucket}/b", "--release-id", "r1")
    assert res.exit_code == 1, res.output
    assert "SignatureDoesNotMatch" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_sigkill_mid_publish_then_resume(target: Target, pki: Pki,
                                        make_release: ReleaseFactory) -> None:
    """A publish killed mid-upload leaves a stale lock; the next run takes it over (dead pid
    on this host), uploads only what is missing, and the entry only ever points at a whole
    release. (Orphaned multipart parts: test_s3.py, taking the lock aborts them.)"""
    rgw, s3, bucket, origin, base = (target.rgw, target.s3, target.bucket,  # noqa: F811
                                     target.origin, target.base)
    r0 = make_release({"boot.ipxe": ENTRY1})
    assert cli_run(rgw, pki, "publish", str(r0), origin, "--release-id", "r0").exit_code == 0
    big = make_release({"boot.ipxe": ENTRY2, "initrd.img": os.urandom(24 << 20)})
    argv = [sys.executable, "-m", "trustboot", "publish", str(big), origin, "--release-id",
            "r1", "--pki", str(pki.dir), "--endpoint-url", rgw.endpoint, "--credentials-env",
            CREDS_ENV, "--json", "--jobs", "1"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    manifest = "boot/releases/r1/release.json"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=manifest):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the publish never claimed the release"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert s3.head_object(Bucket=bucket, Key="boot/.trustboot-publish.lock")  # left behind
    assert anon_get(base + "boot.ipxe", rgw.ca_file)[2] == ENTRY1  # still the old release
    present = {o["Key"].removeprefix("boot/releases/r1/") for o in
               s3.list_objects_v2(Bucket=bucket, Prefix="boot/releases/r1/").get("Contents", [])}
    assert "initrd.img" not in present  # killed before it was complete
    done = subprocess.run(argv, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["switched"]
    # what the killed run finished is not sent again
    everything = {"boot.ipxe", "boot.ipxe.sig", "initrd.img", "initrd.img.sig"}
    assert set(out["uploaded"]) == everything - present
    assert anon_get(base + "boot.ipxe", rgw.ca_file)[2] == ENTRY2
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="boot/.trustboot")[
        "Contents"]] == ["boot/.trustboot-live.json"]  # no lock, no switch record left
    # free the OSD's RAM for the rest of the session
    for key in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]:
        s3.delete_object(Bucket=bucket, Key=key)


def test_no_public_read_publishes_objects_nobody_can_fetch_anonymously(
        target: Target, pki: Pki, make_release: ReleaseFactory) -> None:
    """--no-public-read, for a bucket behind a CDN with origin access: no object (release,
    entry, signatures) gets the public-read ACL, and the read-back goes through
    authenticated reads because no --public-url names the CDN."""
    rgw, s3, base = target.rgw, target.s3, target.base  # noqa: F811
    r1 = make_release({"boot.ipxe": ENTRY1, "vmlinuz": os.urandom(50_000)})
    res = cli_run(rgw, pki, "publish", str(r1), target.origin, "--release-id", "r1",
                  "--no-public-read")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["switched"] and out["readback"] == "backend"
    for key in ("boot.ipxe", "boot.ipxe.sig", "releases/r1/vmlinuz",
                "releases/r1/vmlinuz.sig", "releases/r1/release.json"):
        assert anon_get(base + key, rgw.ca_file)[0] == 403, key
        grants = s3.get_object_acl(Bucket=target.bucket, Key=f"boot/{key}")["Grants"]
        assert not any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants), key
    body = s3.get_object(Bucket=target.bucket, Key="boot/boot.ipxe")["Body"].read()
    assert body == ENTRY1  # the owner (or a CDN's origin access) still reads it
    # the default keeps today's behaviour: anonymously readable
    r2 = make_release({"boot.ipxe": ENTRY2})
    assert cli_run(rgw, pki, "publish", str(r2), target.origin, "--release-id",
                   "r2").exit_code == 0
    assert anon_get(base + "releases/r2/boot.ipxe", rgw.ca_file)[0] == 200
    # --no-public-read with a --public-url that is the store itself: the read-back is
    # refused (403), and the hint says why instead of blaming someone for changing it
    r3 = make_release({"boot.ipxe": ENTRY1 + b"echo r3\n"})
    res = cli_run(rgw, pki, "publish", str(r3), target.origin, "--release-id", "r3",
                  "--no-public-read", "--public-url", base)
    assert res.exit_code == 4, res.output
    assert "HTTP 403" in res.output and "find out who changed" not in res.output, res.output
    assert "--public-url" in res.output.split("hint", 1)[1], res.output


def test_5xx_bursts_on_rgw_are_retried_and_never_half_publish(
        target: Target, pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """Through a proxy that forwards requests unchanged (SigV4 stays valid) and answers
    503 to the first N requests of a kind: bursts within the retry budget (uploads, the
    anonymous read-back, the entry switch's copy) are absorbed; a longer one fails the
    run cleanly with the entry still on the previous, complete release; the next run
    resumes."""
    from tests.publish.s3proxy import Burst, s3_passthrough

    rgw, s3, bucket = target.rgw, target.s3, target.bucket  # noqa: F811
    direct = target.base
    chain = tmp_path / "proxy-chain.pem"  # what RGW presents: server + issuing CA
    chain.write_bytes(pki.cert("origin").read_bytes()
                      + (pki.dir / "issuing-ca.crt").read_bytes())
    with s3_passthrough(rgw.endpoint, cert=chain, key=pki.key("origin"),
                        key_password=KEY_PASS, ca=pki.ca) as (endpoint, state):

        def run(*args: str) -> Result:
            return CliRunner().invoke(cli, [
                *args, "--pki", str(pki.dir), "--endpoint-url", endpoint,
                "--credentials-env", CREDS_ENV, "--json"])

        state.bursts = [Burst("PUT", r"/releases/r1/vmlinuz$", 2),
                        Burst("GET", r"/releases/r1/vmlinuz$", 1),
                        Burst("PUT", r"/boot/boot\.ipxe\.sig$", 1)]
        r1 = make_release({"boot.ipxe": ENTRY1, "vmlinuz": os.urandom(300_000)})
        res = run("publish", str(r1), target.origin, "--release-id", "r1")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["switched"]
        assert state.injected() == 4 and all(b.count == 0 for b in state.bursts)
        assert anon_get(direct + "boot.ipxe", rgw.ca_file)[2] == ENTRY1
        body = s3.get_object(Bucket=bucket, Key="boot/releases/r1/vmlinuz")["Body"].read()
        assert body == (r1 / "vmlinuz").read_bytes()

        # a burst longer than the retries: a clear failure, nothing switched
        state.bursts = [Burst("PUT", r"/releases/r2/vmlinuz$", 50)]
        r2 = make_release({"boot.ipxe": ENTRY2, "vmlinuz": os.urandom(200_000)})
        bad = run("publish", str(r2), target.origin, "--release-id", "r2", "--retries", "1")
        assert bad.exit_code == 1, bad.output
        assert "503" in bad.output or "ServiceUnavailable" in bad.output, bad.output
        assert "Traceback" not in bad.output
        assert anon_get(direct + "boot.ipxe", rgw.ca_file)[2] == ENTRY1  # still r1, whole
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert "boot/releases/r2/vmlinuz" not in keys
        assert {k for k in keys if k.startswith("boot/.trustboot")} == {
            "boot/.trustboot-live.json"}  # lock released (r1's live record stays)

        state.bursts = []
        again = run("publish", str(r2), target.origin, "--release-id", "r2")
        assert again.exit_code == 0, again.output
        assert "vmlinuz" in json.loads(again.output)["uploaded"]
        assert anon_get(direct + "boot.ipxe", rgw.ca_file)[2] == ENTRY2
