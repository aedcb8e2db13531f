"""More of the CLI against nginx: the read-back memo, `origin check`, `origin nginx-config`
refusals, a signed release manifest, hostile names on the https backend, help, umask."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.conftest import call_as_nobody
from tests.publish.conftest import KEY_PASS, Nginx, Pki, ReleaseFactory, http_server, run_cli
from tests.publish.faultproxy import fault_proxy
from trustboot.cli.main import cli
from trustboot.cli.verify import load_trust
from trustboot.publish import webdav
from trustboot.publish.pipeline import build_manifest, scan_directory
from trustboot.publish.readback import Trust

ENTRY = b"#!ipxe\necho more\n"


def publish(pki: Pki, directory: Path, origin: str, release: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "publish", str(directory), origin, "--release-id", release, "--pki", str(pki.dir),
        "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass),
        "--json", *extra])


def test_readback_memo_skips_only_unchanged_objects(pki: Pki, nginx: Nginx,
                                                   make_release: ReleaseFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Every ETag taken as settled (the object written in an earlier second than nginx's
    # answer), as it is a second after the upload: the memo keeps only those
    # (test_etag_settled.py has the others).
    monkeypatch.setattr(webdav, "etag_settled", lambda *_: True)
    r = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"v" * 50000})
    first = json.loads(publish(pki, r, nginx.url, "r1").output)
    assert first["readback_cached"] == []
    second = json.loads(publish(pki, r, nginx.url, "r1").output)
    assert second["uploaded"] == [] and second["readback_cached"] == ["vmlinuz"]
    # a changed object (new mtime, so a new ETag) is read back in full again and caught
    target = nginx.root / "releases/r1/vmlinuz"
    target.write_bytes(b"V" + b"v" * 49999)
    os.utime(target, ns=(1, 1))
    res = publish(pki, r, nginx.url, "r1")
    assert res.exit_code == 4, res.output
    # --full-readback ignores the memo
    target.write_bytes(b"v" * 50000)
    full = json.loads(publish(pki, r, nginx.url, "r1", "--full-readback").output)
    assert full["readback_cached"] == []


def test_origin_check(pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    r = make_release({"boot.ipxe": ENTRY})
    assert publish(pki, r, nginx.url, "r1").exit_code == 0
    res = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                   str(pki.dir), "--signer", "boot-signer", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["tls_version"] == "TLSv1.2" and report["ipxe_accepts"]
    assert "GCM" in report["cipher"] or "SHA" in report["cipher"]
    assert [c["subject"] for c in report["chain"]] == [
        "CN=origin", "CN=trustboot Issuing CA", "CN=trustboot Root CA"]
    # the server certificate expires within a year: asking for 400 days warns
    res = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                   str(pki.dir), "--warn-days", "400", "--json"])
    assert any("expires" in w for w in json.loads(res.output)["warnings"])
    # a wrong --signer: iPXE would refuse, exit 4
    res = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                   str(pki.dir), "--signer", "someone-else"])
    assert res.exit_code == 4, res.output
    assert "REFUSES" in res.output


def test_origin_check_tells_an_outage_from_a_refusal(pki: Pki, nginx: Nginx) -> None:
    """Nothing to judge is exit 1 (a monitor pages for an outage), not 4 (which says iPXE
    refused what the origin served): a port nothing listens on, an entry not served."""
    import socket

    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = CliRunner().invoke(cli, ["origin", "check", f"https://127.0.0.1:{port}/boot.ipxe",
                                    "--pki", str(pki.dir), "--json"])
    assert down.exit_code == 1, down.output
    report = json.loads(down.stdout)  # the report is still printed, then the error
    assert not report["ok"] and "cannot connect" in report["tls_error"]
    assert '"exit_code": 1' in down.stderr
    nginx.clear()  # TLS and the CA are fine, but there is no entry script
    missing = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                       str(pki.dir)])
    assert missing.exit_code == 1, missing.output
    assert "could not check" in missing.output and "404" in missing.output
    # the report must not claim a refusal it did not see
    assert "REFUSES" not in missing.stdout and "not judged" in missing.stdout


def test_origin_check_refuses_credentials_in_the_url_without_echoing_them(pki: Pki) -> None:
    """They were echoed in the report, its JSON, the error and the hint (a CI log)."""
    res = CliRunner().invoke(cli, ["origin", "check", "https://u:SECRETXYZ@127.0.0.1:1/x",
                                   "--pki", str(pki.dir), "--json"])
    assert res.exit_code == 3, res.output
    assert "holds credentials" in res.output and "SECRETXYZ" not in res.output


def test_origin_check_makes_one_connection(pki: Pki, tmp_path: Path,
                                           make_release: ReleaseFactory) -> None:
    """The TLS handshake `origin check` reports on is the one its GETs go on: nginx
    numbers its connections ($connection, one worker), and the entry and its .sig come
    on the connection right after a marker request, with no handshake in between."""
    from tests.publish.conftest import anon_get, start_nginx, stop_nginx

    base = tmp_path / "n"
    log = base / "conn.log"
    nginx = start_nginx(pki, base, main_extra=f"    log_format tbconn '$connection $request';\n"
                                              f"    access_log {log} tbconn;")
    try:
        r = make_release({"boot.ipxe": ENTRY})
        assert publish(pki, r, nginx.url, "r1").exit_code == 0
        anon_get(nginx.url + ".mark", pki)
        res = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                       str(pki.dir), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["tls_version"] == "TLSv1.2"
    finally:
        stop_nginx(nginx)  # flushes the log
    lines = [line.split(" ", 2) for line in log.read_text().splitlines()]
    mark = next(int(n) for n, _m, path in lines if path.startswith("/.mark "))
    after = [(int(n), path.split(" ")[0]) for n, method, path in lines
             if int(n) > mark and method == "GET"]
    assert after == [(mark + 1, "/boot.ipxe"), (mark + 1, "/boot.ipxe.sig")], after


def test_a_failed_check_names_one_error_for_every_caller(pki: Pki, nginx: Nginx,
                                                         make_release: ReleaseFactory) -> None:
    """`origin check` and release's verify stage raise the error the report names: the
    same class (so the same exit code) and the same words for the same origin."""
    from trustboot.errors import ConfigError, OperationalError, VerificationError
    from trustboot.publish.check import CheckReport, check_origin
    from trustboot.release.pipeline import check_entry

    url = nginx.url + "boot.ipxe"
    trust = Trust(tuple(load_trust((), pki.dir)), signer_name="boot-signer")
    nginx.clear()  # nothing served: nothing to judge
    missing = check_origin(url, trust=trust, ca_file=None, now=dt.datetime.now(dt.UTC))
    error = missing.error()
    assert isinstance(error, OperationalError) and error.exit_code == 1
    with pytest.raises(OperationalError) as raised:
        check_entry(url, trust, None, ca_file=None, now=dt.datetime.now(dt.UTC))
    assert raised.value.message == error.message and raised.value.hint == error.hint
    res = CliRunner().invoke(cli, ["origin", "check", url, "--pki", str(pki.dir)])
    assert res.exit_code == 1 and error.message in " ".join(res.output.split())
    r = make_release({"boot.ipxe": ENTRY})
    assert publish(pki, r, nginx.url, "r1").exit_code == 0
    other = Trust(tuple(load_trust((), pki.dir)), signer_name="someone-else")
    refused = check_origin(url, trust=other, ca_file=None, now=dt.datetime.now(dt.UTC))
    error = refused.error(rule="served-entry")
    assert isinstance(error, VerificationError) and error.exit_code == 4
    with pytest.raises(VerificationError) as judged:
        check_entry(url, other, None, ca_file=None, now=dt.datetime.now(dt.UTC))
    assert (judged.value.message, judged.value.rule) == (error.message, "served-entry")
    accepted = check_origin(url, trust=trust, ca_file=None, now=dt.datetime.now(dt.UTC))
    assert accepted.ok and accepted.error() is None
    # a URL that cannot be checked is a configuration error, whoever asks
    unusable = CheckReport(url=url, sig_url=url + ".sig", failure="not https",
                           failure_exit=3)
    assert isinstance(unusable.error(), ConfigError)


@pytest.mark.parametrize("args", [
    ["--server-name", "a;b"], ["--server-name", "x", "--listen", "80; include /etc"],
    ["--server-name", "x", "--root", "/srv/a b"], ["--server-name", "x", "--entry-path",
                                                   "../x"],
    ["--server-name", "x", "--max-body-size", "1g;"],
])
def test_nginx_config_refuses_injection(args: list[str]) -> None:
    res = CliRunner().invoke(cli, ["origin", "nginx-config", "--cert", "/c", "--key", "/k",
                                   "--client-ca", "/ca", "--writer", "publisher", *args])
    assert res.exit_code == 3, res.output


def test_nginx_config_content() -> None:
    out = run_cli("origin", "nginx-config", "--server-name", "boot.example.net", "--cert",
                  "/etc/tb/server.pem", "--key", "/etc/tb/server.key", "--client-ca",
                  "/etc/tb/chain.pem", "--writer", "publisher")
    assert "ssl_verify_client optional;" in out and "autoindex off;" in out
    assert "ECDHE-RSA-AES128-GCM-SHA256" in out and "TLSv1.2" in out
    assert "listen 443 ssl default_server;" in out
    assert "listen [::]:443 ssl default_server;" in out
    assert 'location = /boot.ipxe {' in out and "no-store" in out


def test_signed_release_manifest(pki: Pki, nginx: Nginx, make_release: ReleaseFactory
                                 ) -> None:
    r = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"k" * 100})
    trust = Trust(tuple(load_trust((), pki.dir)))
    manifest = build_manifest("m1", scan_directory(r), entry="boot.ipxe",
                              now=dt.datetime.now(dt.UTC), origin=nginx.url + "releases/m1/",
                              trust=trust)
    (r / "release.json").write_bytes(manifest.to_bytes())
    pki.sign([r / "release.json"], r)
    res = publish(pki, r, nginx.url, "m1")
    assert res.exit_code == 0, res.output
    assert (nginx.root / "releases/m1/release.json").read_bytes() == manifest.to_bytes()
    assert (nginx.root / "releases/m1/release.json.sig").exists()
    # publish list reads it over WebDAV and names the signer its signature proves
    listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, "--pki", str(pki.dir),
                                      "--client-cert", "publisher",
                                      "--client-key-passphrase-file", str(pki.key_pass),
                                      "--json"])
    assert listed.exit_code == 0, listed.output
    m1 = next(i for i in json.loads(listed.stdout) if i["id"] == "m1")
    assert m1["verified"] and m1["signer"] == "CN=boot-signer", m1
    # a manifest that does not describe the files is refused
    (r / "vmlinuz").write_bytes(b"K" * 100)
    pki.sign([r / "vmlinuz"], r)
    res = publish(pki, r, nginx.url, "m2")
    assert res.exit_code == 3, res.output


def test_hostile_names_on_https_never_reach_the_origin(pki: Pki, nginx: Nginx,
                                                      make_release: ReleaseFactory) -> None:
    chain = nginx.base / "server-chain.pem"
    with fault_proxy(nginx.url, cert=chain, key=pki.key("origin"),
                     key_password=pki.key_pass.read_text().strip(), ca=pki.ca,
                     client_cert=pki.cert("publisher"), client_key=pki.key("publisher"),
                     client_password=pki.key_pass.read_text().strip()) as (url, state):
        for name in ("a b.img", "x;y", "${net0/ip}"):
            r = make_release({"boot.ipxe": ENTRY, name: b"x"})
            res = publish(pki, r, url, "h1")
            assert res.exit_code == 3, (name, res.output)
        res = publish(pki, make_release({"boot.ipxe": ENTRY}), url, "../../etc")
        assert res.exit_code == 3
        res = CliRunner().invoke(cli, ["publish", "rollback", url, "../x", "--pki",
                                       str(pki.dir)])
        assert res.exit_code == 3
        assert state.seen == []


def test_help_shows_examples() -> None:
    out = CliRunner().invoke(cli, ["publish", "--help"]).output
    assert "Examples:" in out and "trustboot publish out/ https://" in out
    assert "rollback" in out and "prune" in out and "--release-id" in out
    out = CliRunner().invoke(cli, ["origin", "--help"]).output
    assert "nginx-config" in out and "check" in out


def test_publish_under_umask_000(pki: Pki, make_release: ReleaseFactory,
                                 tmp_path: Path) -> None:
    r = make_release({"boot.ipxe": ENTRY})
    old = os.umask(0)
    try:
        res = CliRunner().invoke(cli, ["publish", str(r), f"file://{tmp_path}/srv",
                                       "--release-id", "u1", "--pki", str(pki.dir)])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for p in (tmp_path / "srv").rglob("*"):
        mode = p.stat().st_mode & 0o777
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))
    assert "switched boot.ipxe to u1" in res.output


def test_unsafe_flags_warn_every_run(pki: Pki, make_release: ReleaseFactory,
                                     tmp_path: Path) -> None:
    r = make_release({"boot.ipxe": ENTRY})
    res = CliRunner().invoke(cli, ["publish", str(r), f"file://{tmp_path}/srv",
                                   "--release-id", "w1", "--pki", str(pki.dir),
                                   "--unsafe-no-tls-verify"])
    assert res.exit_code == 0, res.output
    assert "--unsafe-no-tls-verify" in res.output and "warning" in res.output
    res = CliRunner().invoke(cli, ["publish", str(r), "http://127.0.0.1:9/",
                                   "--release-id", "w1", "--pki", str(pki.dir)])
    assert res.exit_code == 3 and "plain HTTP" in res.output


def _mirror(srv: Path) -> type[http.server.SimpleHTTPRequestHandler]:
    """A quiet handler serving ``srv`` (the file origin's directory), as a web server
    in front of it would."""

    class Mirror(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(srv), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    return Mirror


def test_a_cleartext_public_url_is_refused_for_the_read_back(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """The read-back fetches from the public URL the way clients will. A plain http://
    one is refused (exit 3, nothing switched) even when the cleartext mirror serves the
    right bytes: iPXE would fetch the release unauthenticated. --unsafe-http allows it,
    with a warning."""
    r = make_release({"boot.ipxe": ENTRY})
    srv = tmp_path / "srv"
    with http_server(_mirror(srv)) as url:
        argv = ["publish", str(r), f"file://{srv}", "--release-id", "c1", "--pki",
                str(pki.dir), "--public-url", url]
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 3, res.output
        assert "plain HTTP" in res.output and "--unsafe-http" in res.output
        assert not (srv / "boot.ipxe").exists()
        res = CliRunner().invoke(cli, [*argv, "--unsafe-http"])
        assert res.exit_code == 0, res.output
        assert "--unsafe-http" in res.stderr and "warning" in res.stderr
        assert (srv / "boot.ipxe").read_bytes() == ENTRY
        # and says how the read-back went: not "over HTTPS as iPXE"
        assert "(over plain HTTP: --unsafe-http)" in res.stdout and "HTTPS" not in res.stdout
        res = CliRunner().invoke(cli, [*argv, "--unsafe-http", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["readback"] == "http"


def test_a_tls_failure_in_the_read_back_is_reported_as_tls_not_tampering(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """The public URL serves the origin's certificate without the issuing CA (nginx's
    ssl_certificate with the leaf alone, a common mistake): no client can verify it.
    That is the origin-tls failure with its hint, and `origin check` says so too; not
    "the origin was changed, delete the release" (rule served-object), which fixes
    nothing. Served with the full chain, the same release publishes."""
    r = make_release({"boot.ipxe": ENTRY})
    srv = tmp_path / "srv"
    mirror = _mirror(srv)

    def context(chain: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(chain), str(pki.key("origin")), password=KEY_PASS)
        return ctx

    full = tmp_path / "full-chain.pem"
    full.write_bytes(pki.cert("origin").read_bytes()
                     + (pki.dir / "issuing-ca.crt").read_bytes())
    with http_server(mirror, tls=context(pki.cert("origin"))) as url:
        argv = ["publish", str(r), f"file://{srv}", "--release-id", "t1", "--pki",
                str(pki.dir), "--public-url", url, "--retries", "0", "--json"]
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 4, res.output
        doc = json.loads(res.stderr)
        assert doc["rule"] == "origin-tls", doc
        assert "does not verify" in doc["message"] and "local issuer" in doc["message"]
        assert doc["hint"].startswith("nothing was switched; ")
        assert "trustboot ca issue server" in doc["hint"] and "full chain" in doc["hint"]
        assert "delete" not in doc["hint"]
        assert not (srv / "boot.ipxe").exists()
        checked = CliRunner().invoke(cli, ["origin", "check", url + "boot.ipxe", "--pki",
                                           str(pki.dir), "--timeout", "5"])
        assert checked.exit_code == 4, checked.output
        assert "full chain" in checked.stderr and "issuing-ca.crt" in checked.stderr
        assert "rollback" not in checked.stderr
    with http_server(mirror, tls=context(full)) as url:
        argv[argv.index("--public-url") + 1] = url
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 0, res.output
        assert (srv / "boot.ipxe").read_bytes() == ENTRY
    # an origin that speaks TLS 1.3 only: iPXE (1.2 at most) cannot connect; the hint
    # says what to enable, not to roll back a release that is fine
    only13 = context(full)
    only13.minimum_version = ssl.TLSVersion.TLSv1_3
    with http_server(mirror, tls=only13) as url:
        checked = CliRunner().invoke(cli, ["origin", "check", url + "boot.ipxe", "--pki",
                                           str(pki.dir), "--timeout", "5", "--json"])
        assert checked.exit_code == 4, checked.output
        doc = json.loads(checked.stderr)
        assert doc["rule"] == "origin-tls" and "handshake" in doc["message"], doc
        assert "TLS 1.2" in doc["hint"] and "rollback" not in doc["hint"]


def test_webdav_lock_collection(pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    r = make_release({"boot.ipxe": ENTRY})
    lock = nginx.root / ".trustboot-lock"
    lock.mkdir()
    # held by a live process (this one): the publish fails and names the holder
    (lock / "owner.json").write_text(json.dumps(
        {"owner": "release pipeline 7", "host": os.uname().nodename, "pid": os.getpid(),
         "time": 9e12}))
    res = publish(pki, r, nginx.url, "l1")
    assert res.exit_code == 1, res.output
    assert "locked by release pipeline 7" in res.output
    # left by a dead process: broken, the publish goes through and releases its own lock
    (lock / "owner.json").write_text(json.dumps(
        {"owner": "crashed", "host": os.uname().nodename, "pid": 2**22 + 4321, "time": 0}))
    res = publish(pki, r, nginx.url, "l1")
    assert res.exit_code == 0, res.output
    assert not lock.exists()


def test_manifest_is_what_audit_reads(pki: Pki, make_release: ReleaseFactory,
                                      tmp_path: Path) -> None:
    from trustboot.audit.policy import load_manifest

    r = make_release({"boot.ipxe": ENTRY})
    res = CliRunner().invoke(cli, ["publish", str(r), f"file://{tmp_path}/srv",
                                   "--release-id", "a1", "--pki", str(pki.dir),
                                   "--public-url", "https://127.0.0.1:9/", "--retries", "0"])
    assert res.exit_code == 1  # the read-back goes to the public URL, which is not there
    assert "127.0.0.1:9" in res.output
    m = load_manifest(tmp_path / "srv/releases/a1/release.json")
    assert m.release == "a1" and m.origin == "https://127.0.0.1:9/releases/a1/"
    assert {f.name for f in m.files} == {"boot.ipxe", "boot.ipxe.sig"}


@pytest.mark.parametrize("which", ["ca", "client-cert", "client-key"])
def test_tls_files_that_are_fifos_are_refused_unread(pki: Pki, nginx: Nginx, tmp_path: Path,
                                                     which: str) -> None:
    """OpenSSL opens --ca-file and the client certificate and key by path and reads them
    to the end: a FIFO there hung `origin check` (a monitor) and every publish command
    forever. Refused (exit 3) naming the file, before any connection."""
    import subprocess
    import sys

    fifo = tmp_path / f"{which}.fifo"
    os.mkfifo(fifo)
    if which == "ca":
        argv = ["origin", "check", nginx.url + "boot.ipxe", "--ca-file", str(fifo),
                "--pki", str(pki.dir)]
        what = "origin CA file"
    else:
        files = {"client-cert": str(pki.cert("publisher")),
                 "client-key": str(pki.dir / "private" / "publisher.key"), which: str(fifo)}
        argv = ["publish", "list", nginx.url, "--ca-file", str(pki.ca),
                "--client-cert-file", files["client-cert"],
                "--client-key-file", files["client-key"],
                "--client-key-passphrase-file", str(pki.key_pass)]
        what = "client certificate" if which == "client-cert" else "client key"
    proc = subprocess.run([sys.executable, "-m", "trustboot", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert f"{what} {fifo} is not a regular file" in proc.stderr, proc.stderr


def test_an_unreadable_subdirectory_stops_the_scan() -> None:
    """os.walk skips a directory it cannot read: the release would be published without
    the files in it. The scan stops (exit 1) naming that directory instead. Run as another
    uid in a forked child (root reads everything)."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("reading as another uid needs root (CI runs as root)")
    with tempfile.TemporaryDirectory(prefix="tb-scan-") as tmp:
        tree = Path(tmp) / "release"
        tree.mkdir()
        os.chmod(tmp, 0o755)
        (tree / "boot.ipxe").write_bytes(b"#!ipxe\n")
        hidden = tree / "linux"
        hidden.mkdir(mode=0o700)  # root's: nobody cannot list it
        (hidden / "vmlinuz").write_bytes(b"kernel")

        said = call_as_nobody(lambda: scan_directory(tree))
        assert said.startswith("OperationalError: cannot read "), said
        assert str(hidden) in said
        hidden.chmod(0o755)  # the control: readable, the scan goes on to judge the files
        said = call_as_nobody(lambda: scan_directory(tree))
        assert "cannot read" not in said and said.startswith("ConfigError"), said


SECRET = "s3cret-Key"


@pytest.mark.parametrize(("option", "url", "expect"), [
    ("--endpoint-url", f"https://AKID:{SECRET}@[::1/", "not a valid URL"),
    ("--endpoint-url", f"https://AKID:{SECRET}@s3.example.net/", "holds credentials"),
    ("--endpoint-url", "https://s3.example.net:99999", "not a valid URL"),
    ("--endpoint-url", "http://s3.example.net", "plain HTTP"),
    ("--endpoint-url", "https://s3.example.net/?x", "query or fragment"),
    ("--public-url", "https://boot.example.net:99999/", "not a valid URL"),
    ("--public-url", f"https://u:{SECRET}@boot.example.net/", "holds credentials"),
    ("--public-url", f"https://u:{SECRET}@boot.example.net:99999/", "not a valid URL"),
    ("--public-url", f"https://u:{SECRET}@[::1/", "not a valid URL"),
    ("--public-url", "https://boot.example.net/?x=1", "query or fragment"),
    ("--public-url", "https://boot.example.net/#top", "query or fragment"),
    ("--public-url", "ftp://boot.example.net/", "not an https:// URL"),
    ("--public-url", "https://boot.example.net/a b/", "whitespace"),
    ("--public-url", "https:///boot/", "no host"),
])
def test_endpoint_and_public_urls_are_checked_before_anything(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, option: str, url: str,
        expect: str) -> None:
    """A malformed --endpoint-url or --public-url is a usage error of the input (exit 3)
    before any request or upload, never an internal error (exit 70) or one found after
    uploading; a user:password@ in it never reaches the output, JSON included."""
    srv = tmp_path / "srv"
    origin = "s3://boot/prod" if option == "--endpoint-url" else f"file://{srv}"
    r = make_release({"boot.ipxe": ENTRY})
    for argv in (["publish", str(r), origin, "--release-id", "u1"],
                 ["publish", "list", origin], ["publish", "repair", origin]):
        res = CliRunner().invoke(cli, [*argv, "--pki", str(pki.dir), option, url, "--json",
                                       "--retries", "0", "--timeout", "2"])
        assert res.exit_code == 3, res.output
        err = json.loads(res.stderr)
        assert expect in err["message"], err
        assert option in err["message"], err
        assert SECRET not in res.output
    assert not srv.exists()


def test_a_public_url_given_to_the_library_is_checked_when_the_origin_opens(
        tmp_path: Path) -> None:
    from trustboot.errors import ConfigError
    from trustboot.publish.origin import OriginOptions, open_origin

    with pytest.raises(ConfigError, match="not a valid URL") as err:
        open_origin(f"file://{tmp_path}/srv", OriginOptions(
            public_url=f"https://u:{SECRET}@boot.example.net:99999/"))
    assert SECRET not in err.value.message
    # plain HTTP only when asked for, as for the origin itself
    with pytest.raises(ConfigError, match="plain HTTP"):
        open_origin(f"file://{tmp_path}/srv", OriginOptions(public_url="http://h/"))
    open_origin(f"file://{tmp_path}/srv", OriginOptions(public_url="http://h/",
                                                         unsafe_http=True))


def test_a_manifest_origin_with_credentials_is_not_echoed() -> None:
    from trustboot.errors import ConfigError
    from trustboot.publish.manifest import ManifestFile, ReleaseManifest, parse_manifest

    m = ReleaseManifest(release="r1", created=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                        files=(ManifestFile("a", 1, "0" * 64),), entry="a")
    planted = json.loads(m.to_bytes()) | {
        "origin": f"https://u:{SECRET}@boot.example.net/releases/r1/"}
    with pytest.raises(ConfigError) as err:  # (a manifest is read from the origin)
        parse_manifest(json.dumps(planted).encode())
    assert "without credentials" in err.value.message
    assert SECRET not in err.value.message
    assert "boot.example.net/releases/r1/" in err.value.message
