"""The RGW fixture itself: HTTPS with the test CA's chain, and a stop that really stops."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.publish.conftest import KEY_PASS
from tests.publish.rgw import RGW, anon_get, rgw, start_rgw  # noqa: F401  (the session fixture)


def test_rgw_serves_https_with_the_test_ca(rgw: RGW) -> None:  # noqa: F811
    ctx = ssl.create_default_context(cafile=str(rgw.ca_file))
    with urllib.request.urlopen(rgw.endpoint + "/", context=ctx, timeout=10) as resp:
        assert resp.status == 200
        assert b"ListAllMyBucketsResult" in resp.read()
    # The system store does not know the test CA: the chain really is private.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(rgw.endpoint + "/", context=ssl.create_default_context(),
                               timeout=10)
    print(f"RGW started in {rgw.startup_seconds:.1f} s")
    assert all(p.poll() is None for p in rgw.procs.values())


@pytest.mark.slow
def test_a_cluster_stops_by_pid_and_frees_its_ports(rgw: RGW, tmp_path: Path) -> None:  # noqa: F811
    """A second, private cluster (same pki): started, then stopped the way the session's is."""
    other = start_rgw(tmp_path / "c", rgw.pki, "origin", KEY_PASS.encode())
    try:
        assert other.endpoint != rgw.endpoint
        assert anon_get(other.endpoint + "/", other.ca_file)[0] == 200
    finally:
        procs = list(other.procs.values())
        other.stop()
    assert all(p.poll() is not None for p in procs)  # exited and reaped: no zombies
    port = urlsplit(other.endpoint).port
    with socket.socket() as s:  # nothing listens there any more (daemons bind like this)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    assert anon_get(rgw.endpoint + "/", rgw.ca_file)[0] == 200  # the session's is untouched
