"""Fixtures for publish tests: a pki made by `trustboot ca`, signed releases made by
`trustboot sign`, and a real nginx WebDAV origin over TLS started from the config that
`trustboot origin nginx-config` generates (once per session, 127.0.0.1, ephemeral port)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.procs import stop_process
from trustboot.cli.main import cli

CA_PASS = "publish ca pass"
KEY_PASS = "publish key pass"
DAV_EXT = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")


def run_cli(*args: str) -> str:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return r.output


@dataclass
class Pki:
    dir: Path
    secrets: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def key_pass(self) -> Path:
        return self.secrets / "key.pass"

    def cert(self, name: str) -> Path:
        return self.dir / "issued" / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / "private" / f"{name}.key"

    def issue(self, profile: str, *args: str) -> None:
        run_cli("ca", "issue", profile, *args, "--pki", str(self.dir), "--key-type",
                "rsa-2048", "--passphrase-file", str(self.secrets / "ca.pass"),
                "--key-passphrase-file", str(self.key_pass))

    def sign(self, files: list[Path], out: Path, signer: str = "boot-signer") -> None:
        run_cli("sign", "--key", signer, "--pki", str(self.dir), "--passphrase-file",
                str(self.key_pass), "--out", str(out), *map(str, files))


def make_pki(base: Path) -> Pki:
    secrets = base / "secrets"
    secrets.mkdir(mode=0o700, parents=True)
    (secrets / "ca.pass").write_text(CA_PASS + "\n")
    (secrets / "key.pass").write_text(KEY_PASS + "\n")
    for f in secrets.iterdir():
        f.chmod(0o600)
    pki = Pki(base / "pki", secrets)
    run_cli("ca", "init", "--pki", str(pki.dir), "--key-type", "rsa-3072", "--passphrase-file",
            str(secrets / "ca.pass"))
    pki.issue("codesign", "boot-signer")
    pki.issue("codesign", "other-signer")
    pki.issue("server", "127.0.0.1", "localhost", "10.0.2.2", "--name", "origin")
    pki.issue("client", "publisher")
    return pki


@pytest.fixture(autouse=True)
def _publish_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own read-back memo (never the user's)."""
    monkeypatch.setenv("TRUSTBOOT_PUBLISH_CACHE", str(tmp_path / "publish-cache.json"))


@pytest.fixture(autouse=True)
def _origin_ca_from_the_operator(request: pytest.FixtureRequest,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A `trustboot release` of a lab recipe (tests.release.lab: origin.ca_file
    pki/ca.crt, with credentials or a client certificate) gets the origin's CA from the
    operator, as a CI job gives it (tests/release/test_origin_ca.py checks the rule)."""
    if "pki" in request.fixturenames:
        from trustboot.release.plan import ORIGIN_CA_ENV
        monkeypatch.setenv(ORIGIN_CA_ENV, str(request.getfixturevalue("pki").ca))


@pytest.fixture(params=["file", "webdav", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each kind of origin a test runs against (with `store` for s3)."""
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest) -> Any:
    """The session's RGW for s3 (started in setup, not by the test: not left behind; a
    module using this imports the `rgw` fixture from tests.publish.rgw), else None."""
    return request.getfixturevalue("rgw") if kind == "s3" else None


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("publish-pki"))


def revoke_as_compromised(pki: Pki, home: Path, name: str) -> None:
    """`trustboot ca revoke NAME --reason key_compromise` in the CA home ``home`` (a copy
    of the session ``pki``, whose CA passphrase it takes)."""
    run_cli("ca", "revoke", name, "--reason", "key_compromise", "--pki", str(home),
            "--passphrase-file", str(pki.secrets / "ca.pass"))


@pytest.fixture
def revoked_pki(pki: Pki, tmp_path: Path) -> Path:
    """A copy of the session pki in which boot-signer (what make_release signs with) is
    revoked as compromised by `trustboot ca revoke`; the session pki stays as it was."""
    copy = tmp_path / "pki2"
    shutil.copytree(pki.dir, copy, symlinks=True)
    revoke_as_compromised(pki, copy, "boot-signer")
    return copy


def rewind_resign(root: Path, record: bytes, new_id: str,
                  live: str = "r1") -> tuple[Path, dict[str, Any]]:
    """The file:// origin ``root`` as if a resign to ``new_id`` had died before signing
    its manifest: ``live``'s entry pair and the live ``record`` back in place, new_id's
    release.json.sig gone. new_id's directory and parsed release.json (for the test to
    edit and write back)."""
    new_dir = root / "releases" / new_id
    for name in ("boot.ipxe", "boot.ipxe.sig"):
        (root / name).write_bytes((root / "releases" / live / name).read_bytes())
    (root / ".trustboot-live.json").write_bytes(record)
    (new_dir / "release.json.sig").unlink()
    return new_dir, json.loads((new_dir / "release.json").read_bytes())


def resign(pki: Pki, origin: str, key: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "resign", origin, "--key", key, "--pki", str(pki.dir), "--passphrase-file",
        str(pki.key_pass), "--json", *extra])


def resign_refuses_switch_back(pki: Pki, url: str, key: str, root: Path,
                               state: Callable[[Path], object]) -> dict[str, Any]:
    """Run resign on the file:// origin ``root`` where it must not re-sign what is served
    (a switch back it cannot show to go forward): exit 4, rule unrecorded-rollback,
    ``state(root)`` unchanged and no re-signed release written. Returns the error
    document for the test's own checks of message and hint."""
    before = state(root)
    res = resign(pki, url, key)
    assert res.exit_code == 4, res.output
    err: dict[str, Any] = json.loads(res.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert state(root) == before
    assert not [p for p in (root / "releases").iterdir() if ".rs-" in p.name]
    return err


LIVE_RECORD_TAMPERING = ("deleted", "names-the-target", "unparsable")


def tamper_live_record(root: Path, how: str, release: str) -> None:
    """What an origin writer can do to the live record (.trustboot-live.json, which
    release trustboot last made live at boot.ipxe) of the file:// origin ``root``: delete
    it, rewrite it to name ``release``, or make it unparsable."""
    path = root / ".trustboot-live.json"
    if how == "deleted":
        path.unlink()
    elif how == "names-the-target":
        doc = json.loads(path.read_bytes())
        doc["entries"]["boot.ipxe"]["release"] = release
        path.write_text(json.dumps(doc))
    else:
        assert how == "unparsable", how
        path.write_bytes(b"{not json")


ReleaseFactory = Callable[..., Path]


@pytest.fixture
def make_release(pki: Pki, tmp_path: Path) -> ReleaseFactory:
    """A directory of files and their .sig, signed by `trustboot sign`."""
    counter = iter(range(1000))

    def make(files: dict[str, bytes], *, signer: str = "boot-signer") -> Path:
        out = tmp_path / f"release{next(counter)}"
        out.mkdir()
        paths = []
        for name, data in files.items():
            path = out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(path)
        for path in paths:
            pki.sign([path], path.parent, signer=signer)
        return out

    return make


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler],
                tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A plain-HTTP server on 127.0.0.1 answering with ``handler`` (a misbehaving origin
    for the read-back's tests), in daemon threads: its base URL, ending in '/'. With
    ``tls``, HTTPS with that server context (the certificates it sends are the test's)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def origin_ca_server(handler: type[http.server.BaseHTTPRequestHandler], pki: Pki,
                     tmp_path: Path) -> Iterator[str]:
    """http_server over TLS with the certificate ``origin`` of ``pki``'s CA (the CA file a
    hostile recipe brings would make its host verify the same): its URL."""
    chain = tmp_path / f"{handler.__name__.strip('_').lower()}-chain.pem"
    chain.write_bytes(pki.cert("origin").read_bytes()
                      + (pki.dir / "issuing-ca.crt").read_bytes())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain), str(pki.key("origin")), password=KEY_PASS)
    with http_server(handler, tls=ctx) as url:
        yield url


def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Only what a test sets of boto3's credential chain: no AWS_* variable, profile or
    config of the machine's, no instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def gzip_of_zeros(size: int) -> bytes:
    """``size`` zero bytes gzipped: a decompression bomb (about 1,000 to 1) for answers
    that must never be inflated."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    return packer.compress(bytes(size)) + packer.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Nginx:
    url: str
    root: Path
    port: int
    base: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        return (self.base / "error.log").read_text(errors="replace")

    def clear(self) -> None:
        for child in self.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def start_nginx(pki: Pki, base: Path, *, extra_args: tuple[str, ...] = (),
                main_extra: str = "", other_site: Callable[[int], str] | None = None
                ) -> Nginx:
    """nginx serving the site `origin nginx-config` renders; ``other_site(port)``, if
    given, is a server block placed before it (another site sharing the port)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("needs nginx (Debian package nginx); .ci/setup installs it")
    if not DAV_EXT.exists():
        pytest.skip("needs libnginx-mod-http-dav-ext; .ci/setup installs it")
    root, tmp = base / "www", base / "body-tmp"
    root.mkdir(mode=0o755, parents=True)
    tmp.mkdir(mode=0o700)
    chain = base / "server-chain.pem"
    chain.write_bytes(pki.cert("origin").read_bytes() + (pki.dir / "issuing-ca.crt").read_bytes())
    port = free_port()
    args = ["origin", "nginx-config", "--server-name", "127.0.0.1", "--server-name",
            "localhost", "--listen", f"127.0.0.1:{port}", "--root", str(root),
            "--cert", str(chain), "--key", str(pki.key("origin")),
            "--key-password-file", str(pki.key_pass), "--client-ca",
            str(pki.dir / "chain.pem"), "--body-temp-dir", str(tmp),
            # the fixtures' writer, unless a test says who writes
            *(() if any(a.startswith(("--writer", "--unsafe-any-client")) for a in extra_args)
              else ("--writer", "publisher")), *extra_args]
    made = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert made.exit_code == 0, made.output
    (base / "site.conf").write_text(made.stdout)  # (warnings go to stderr)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(f"    {t}_temp_path {base}/{t}-tmp;" for t in
                      ("proxy", "fastcgi", "uwsgi", "scgi"))
    (base / "nginx.conf").write_text(f"""\
load_module {DAV_EXT};
{user}worker_processes 1;
daemon off;
pid {base}/nginx.pid;
error_log {base}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {base}/access.log;
{temps}
    sendfile on;
{main_extra}
{other_site(port) if other_site else ""}
    include {base}/site.conf;
}}
""")
    proc = subprocess.Popen([nginx, "-e", str(base / "error.log"), "-p", str(base), "-c",
                             str(base / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"nginx exited: {err}\n{(base / 'error.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    return Nginx(url, root, port, base, proc)


def stop_nginx(n: Nginx) -> None:
    stop_process(n.process, 5)


@contextlib.contextmanager
def scratch_nginx(prefix: str) -> Iterator[tuple[Path, Pki, Nginx]]:
    """A fresh CA and an nginx origin in a temporary directory, both gone afterwards:
    (the directory, the CA, nginx). For the benchmarks, which run outside pytest."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        base = Path(tmp)
        pki = make_pki(base / "ca")
        nginx = start_nginx(pki, base / "nginx")
        try:
            yield base, pki, nginx
        finally:
            stop_nginx(nginx)


@pytest.fixture(scope="session")
def nginx_origin(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    n = start_nginx(pki, tmp_path_factory.mktemp("nginx"))
    yield n
    stop_nginx(n)


@pytest.fixture
def nginx(nginx_origin: Nginx) -> Nginx:
    """The session's nginx with an empty document root."""
    nginx_origin.clear()
    return nginx_origin


def anon_get(url: str, pki: Pki) -> httpx.Response:
    return httpx.get(url, verify=ssl.create_default_context(cafile=str(pki.ca)),
                     trust_env=False)


def logged_requests(nginx: Nginx, pki: Pki, action: Callable[[], object]) -> list[str]:
    """The requests ("METHOD /path") nginx logged while ``action`` ran. nginx writes a
    line once it has answered, so the client may go on before its last request is
    logged: the window is cut by a marker request before and after (one worker: logged
    in order), not by the log's size, which let a late line of the step before in."""
    log = nginx.base / "access.log"
    tag = os.urandom(6).hex()
    anon_get(f"{nginx.url}.mark-{tag}-start", pki)
    action()
    anon_get(f"{nginx.url}.mark-{tag}-end", pki)
    deadline = time.monotonic() + 10
    while f"/.mark-{tag}-end " not in (text := log.read_text()):
        assert time.monotonic() < deadline, "the end marker was never logged"
        time.sleep(0.05)
    window = text.split(f"/.mark-{tag}-start ", 1)[1].split("\n", 1)[1]
    window = window.split(f"/.mark-{tag}-end ", 1)[0].rpartition("\n")[0]
    return re.findall(r'"([A-Z]+ \S+) ', window)
