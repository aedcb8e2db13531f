"""A real iPXE (built by `trustboot ipxe build --chain`) boots from Ceph RGW after
`trustboot publish` to s3://, before and after a rollback; a tampered entry never runs.
Needs TRUSTBOOT_IPXE_SRC and QEMU."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")

from tests.ipxe_qemu import DONE_MARKER, boot, chain_firmware, ipxe_src_or_skip
from tests.publish.conftest import Pki, ReleaseFactory
from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from tests.publish.test_s3_publish import CREDS_ENV, cli_run

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]


def _entry(marker: str) -> bytes:
    return f"#!ipxe\necho {marker}\necho {DONE_MARKER}\n".encode()


@pytest.fixture(scope="session")
def ipxe_src() -> Path:
    """Skips before the session fixtures (pki, RGW) are built for nothing."""
    return ipxe_src_or_skip()


def test_real_ipxe_boots_from_rgw_and_the_rollback(
        ipxe_src: Path, rgw: RGW, pki: Pki, make_release: ReleaseFactory,  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = ipxe_src
    monkeypatch.setenv(CREDS_ENV, f"{rgw.access_key}:{rgw.secret_key}")
    bucket = f"tb-ipxe-{os.getpid()}"
    s3 = rgw.client()
    s3.create_bucket(Bucket=bucket)
    origin = f"s3://{bucket}/boot"
    port = urlsplit(rgw.endpoint).port
    # QEMU's user network reaches the host's loopback at 10.0.2.2 (in the server cert)
    lkrn = chain_firmware(src, pki.dir, f"https://10.0.2.2:{port}/{bucket}/boot/boot.ipxe",
                          tmp_path / "fw")
    stops = (DONE_MARKER, "Could not verify", "stopping")

    def boot_marker() -> str:
        return boot(lkrn, {}, "#!ipxe\n", restrict=False, stop_on=stops, timeout=150)

    def publish(*args: str) -> None:
        r = cli_run(rgw, pki, *args, "--signer", "boot-signer")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["switched"]

    ra = make_release({"boot.ipxe": _entry("MARKER-RELEASE-A")})
    publish("publish", str(ra), origin, "--release-id", "a")
    console = boot_marker()
    assert "MARKER-RELEASE-A" in console, console

    rb = make_release({"boot.ipxe": _entry("MARKER-RELEASE-B")})
    publish("publish", str(rb), origin, "--release-id", "b")
    console = boot_marker()
    assert "MARKER-RELEASE-B" in console, console

    publish("publish", "rollback", origin, "a")
    console = boot_marker()
    assert "MARKER-RELEASE-A" in console and "MARKER-RELEASE-B" not in console, console

    # a tampered entry on the store never runs
    s3.put_object(Bucket=bucket, Key="boot/boot.ipxe", Body=_entry("MARKER-TAMPERED"),
                  ACL="public-read")
    console = boot_marker()
    assert "MARKER-TAMPERED" not in console, console
    assert "Could not verify" in console or "stopping" in console, console
