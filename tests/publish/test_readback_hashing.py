"""The read-back hashes exactly the bytes the origin serves, enforces the size cap, and
takes a body cut short for an error, never for a digest."""

from __future__ import annotations

import hashlib
import http.server
import os
from collections.abc import Iterator

import pytest

from tests.publish.conftest import Nginx, Pki, http_server
from trustboot.errors import OperationalError
from trustboot.publish import readback
from trustboot.publish.origin import TooLarge
from trustboot.publish.readback import Reader

SIZES = [0, 1000, 3 * readback.CHUNK + 12345]


@pytest.mark.parametrize("size", SIZES)
def test_digests_are_those_of_the_served_bytes(size: int, pki: Pki, nginx: Nginx) -> None:
    data = os.urandom(size)
    (nginx.root / "image").write_bytes(data)
    with Reader(ca_file=pki.ca) as reader:
        served = reader.stream(nginx.url + "image", max_size=size,
                               hash_names=("sha256", "sha384"))
        assert served.size == size
        assert served.digests == {"sha256": hashlib.sha256(data).digest(),
                                  "sha384": hashlib.sha384(data).digest()}
        if size:
            with pytest.raises(TooLarge, match="larger than"):
                reader.stream(nginx.url + "image", max_size=size - 1)
        # the connection a refused body left behind is not reused half-read
        assert reader.stream(nginx.url + "image", max_size=size).size == size


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Announces the body size the path names, sends half of it, closes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        announced = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(b"\0" * (announced // 2))
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cut_short() -> Iterator[str]:
    with http_server(_CutShort) as url:
        yield url


@pytest.mark.parametrize("announced", [1000, 3 * readback.CHUNK])
def test_a_body_cut_short_is_an_error(announced: int, cut_short: str) -> None:
    """Not the digest of the half that arrived (which a release would report as the origin
    serving other bytes): a transfer error, retried like any other."""
    url = f"{cut_short}{announced}"
    with Reader(unsafe_http=True, unsafe_no_verify=True, retries=0) as reader, \
            pytest.raises(OperationalError, match=str(announced)):
        reader.stream(url, max_size=1 << 30)
