"""Which multipart uploads taking an S3 origin's lock aborts, against a real Ceph RGW.

Only what a killed publish of THIS origin left: uploads under ``<prefix>/releases/``,
initiated before the lock was taken. Never another application's uploads in a shared
bucket, never those of an origin nested under this one's prefix (``s3://b/prod/staging``
inside ``s3://b/prod``), never one started after the lock was taken."""

from __future__ import annotations

import os
from typing import Any

import pytest
from click.testing import CliRunner, Result

pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")

from tests.publish.conftest import Pki, ReleaseFactory
from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from trustboot.cli.main import cli
from trustboot.publish.origin import Credentials, OriginOptions, open_origin
from trustboot.publish.s3 import S3Origin

CREDS_ENV = "TB_TEST_S3_CREDENTIALS"
_BUCKETS = iter(range(1000))


@pytest.fixture
def s3_env(rgw: RGW, monkeypatch: pytest.MonkeyPatch) -> RGW:  # noqa: F811
    monkeypatch.setenv(CREDS_ENV, f"{rgw.access_key}:{rgw.secret_key}")
    return rgw


def new_bucket(rgw: RGW, s3: Any, stem: str) -> str:  # noqa: F811
    name = f"{stem}-{os.getpid()}-{next(_BUCKETS)}"
    s3.create_bucket(Bucket=name)
    return name


def publish(rgw: RGW, pki: Pki, *args: str) -> Result:  # noqa: F811
    return CliRunner().invoke(cli, [
        "publish", *args, "--pki", str(pki.dir), "--endpoint-url", rgw.endpoint,
        "--credentials-env", CREDS_ENV, "--json"])


def start_upload(s3: Any, bucket: str, key: str) -> tuple[str, dict[str, object]]:
    """A multipart upload with one part stored: its id and the part to complete it with."""
    upload_id = str(s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
    part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1,
                          Body=b"x" * 1000)
    return upload_id, {"PartNumber": 1, "ETag": part["ETag"]}


def live_uploads(s3: Any, bucket: str) -> dict[str, str]:
    return {u["UploadId"]: u["Key"]
            for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_publishing_to_a_shared_bucket_leaves_other_applications_uploads(
        s3_env: RGW, pki: Pki, make_release: ReleaseFactory) -> None:
    """An origin at the bucket's root (no prefix) shares the bucket with whatever else
    writes there: another application's upload in progress must survive the publish."""
    s3 = s3_env.client()
    bucket = new_bucket(s3_env, s3, "shared")
    upload_id, part = start_upload(s3, bucket, "other-app/backup.tar")
    release = make_release({"boot.ipxe": b"#!ipxe\necho shared\n"})
    res = publish(s3_env, pki, str(release), f"s3://{bucket}", "--release-id", "r1")
    assert res.exit_code == 0, res.output
    assert live_uploads(s3, bucket) == {upload_id: "other-app/backup.tar"}
    s3.complete_multipart_upload(Bucket=bucket, Key="other-app/backup.tar",
                                 UploadId=upload_id, MultipartUpload={"Parts": [part]})
    assert s3.head_object(Bucket=bucket, Key="other-app/backup.tar")["ContentLength"] == 1000


def test_publishing_an_origin_leaves_a_nested_origins_uploads(
        s3_env: RGW, pki: Pki, make_release: ReleaseFactory) -> None:
    """s3://b/prod and s3://b/prod/staging are two origins: publishing prod aborts what a
    killed publish of prod left (prod/releases/...), not staging's live upload."""
    s3 = s3_env.client()
    bucket = new_bucket(s3_env, s3, "nested")
    staging, part = start_upload(s3, bucket, "prod/staging/releases/s1/initrd")
    left, _ = start_upload(s3, bucket, "prod/releases/r0/initrd")  # a killed prod publish
    release = make_release({"boot.ipxe": b"#!ipxe\necho prod\n"})
    res = publish(s3_env, pki, str(release), f"s3://{bucket}/prod", "--release-id", "r1")
    assert res.exit_code == 0, res.output
    assert left not in live_uploads(s3, bucket)
    assert live_uploads(s3, bucket) == {staging: "prod/staging/releases/s1/initrd"}
    s3.complete_multipart_upload(Bucket=bucket, Key="prod/staging/releases/s1/initrd",
                                 UploadId=staging, MultipartUpload={"Parts": [part]})


def test_only_release_objects_are_aborted(rgw: RGW) -> None:  # noqa: F811
    """Under the origin's own prefix, trustboot uploads in parts only objects of a release:
    an upload of another key there (a file someone else keeps beside the releases) stays."""
    s3 = rgw.client()
    bucket = new_bucket(rgw, s3, "scope")
    beside, _ = start_upload(s3, bucket, "p/notes/big.iso")
    left, _ = start_upload(s3, bucket, "p/releases/r1/initrd")
    with open_origin(f"s3://{bucket}/p", _options(rgw)) as o, o.lock("next run"):
        assert live_uploads(s3, bucket) == {beside: "p/notes/big.iso"}
    assert left not in live_uploads(s3, bucket)


def test_an_upload_started_after_the_lock_was_taken_is_not_aborted(
        rgw: RGW) -> None:  # noqa: F811
    """Whatever was initiated after this run's lock was created cannot be a killed run's
    leftover: it is spared (here it starts right after the lock's PUT is answered, before
    the stale uploads are looked for)."""
    s3 = rgw.client()
    bucket = new_bucket(rgw, s3, "late")
    left, _ = start_upload(s3, bucket, "p/releases/r1/initrd")
    late: list[str] = []

    def start_late(**_: object) -> None:
        if not late:
            late.append(start_upload(s3, bucket, "p/releases/r2/initrd")[0])

    with S3Origin(f"s3://{bucket}/p", _options(rgw)) as o:
        o.client.meta.events.register("after-call.s3.PutObject", start_late)
        with o.lock("this run"):
            assert late and live_uploads(s3, bucket) == {late[0]: "p/releases/r2/initrd"}
    assert left not in live_uploads(s3, bucket)


def _options(rgw: RGW) -> OriginOptions:  # noqa: F811
    return OriginOptions(ca_file=rgw.ca_file, endpoint_url=rgw.endpoint, timeout=10.0,
                         retries=1, credentials=Credentials("basic", rgw.secret_key,
                                                            username=rgw.access_key,
                                                            source="test"))
