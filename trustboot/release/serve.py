"""A short-lived HTTPS server for a local directory: the demo's origin on 127.0.0.1.

Static GETs only, from one directory, in a thread of the calling process, with a server
certificate of the demo CA. TLS 1.2 is allowed (iPXE has no TLS 1.3). The private key is
written unencrypted only for the moment ``ssl`` loads it, in a 0700 directory, and
removed at once. Any local user can connect to the port: each connection's TLS handshake
and requests run in its own thread under a timeout, so one that never speaks (or speaks
no TLS) costs that thread a few seconds and never stalls the others' fetches.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import ssl
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from trustboot import fsutil

if TYPE_CHECKING:
    from trustboot.keys.keyfile import PrivateKey


# Seconds a connection may stay silent (its handshake, each request) before it is dropped.
CONNECTION_TIMEOUT = 10.0


class _Handler(http.server.SimpleHTTPRequestHandler):
    timeout = CONNECTION_TIMEOUT  # StreamRequestHandler.setup puts it on the connection

    def setup(self) -> None:
        super().setup()
        # here, in this connection's thread: in the accept loop a client that never sends
        # its hello would hold up every other connection, the release's read-back included
        self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: the library never prints

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "not found")
        return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that timed out or spoke no TLS: quiet, as the library is


@contextlib.contextmanager
def serve_https(directory: Path, *, cert_chain_pem: bytes, key: PrivateKey,
                scratch: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Serve ``directory`` over HTTPS on ``host`` (``port``, default ephemeral; yielded)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    fsutil.ensure_private_dir(scratch)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_file = scratch / f"server-{os.getpid()}.key"
    cert_file = scratch / f"server-{os.getpid()}.crt"
    try:
        fsutil.write_private_file(key_file, key_pem, overwrite=True)
        fsutil.atomic_write(cert_file, cert_chain_pem)
        ctx.load_cert_chain(str(cert_file), str(key_file))
    finally:
        for f in (key_file, cert_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    server = _Server((host, port), partial(_Handler, directory=str(directory)))
    # the handshake is made in each connection's own thread (_Handler.setup)
    server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                    do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="trustboot-https",
                              daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
