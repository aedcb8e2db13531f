"""The RGW fixture itself: HTTPS with the test CA's chain, and a stop that really stops."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest

from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)


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
