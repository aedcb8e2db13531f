"""Credentials bound to their origin: a secret written as ``ORIGIN_URL secret`` is only
ever sent to that origin, so a changed recipe or option cannot send it elsewhere."""

from __future__ import annotations

import http.server
import os
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner, Result

from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.publish.origin import (
    check_ambient_scope,
    credentials_cover,
    parse_ambient_binding,
    parse_credentials,
)

from .conftest import Nginx, Pki, ReleaseFactory, http_server


def test_a_leading_origin_url_binds_basic_and_bearer_credentials() -> None:
    c = parse_credentials("https://dav.example.net/boot/ alice:pa ss:word\n", "file f")
    assert (c.scheme, c.username, c.secret) == ("basic", "alice", "pa ss:word")
    assert c.scope == "https://dav.example.net/boot/"
    b = parse_credentials("s3://bucket/prod Bearer tok", "env X")
    assert (b.scheme, b.secret, b.scope) == ("bearer", "tok", "s3://bucket/prod")
    plain = parse_credentials("alice:s3cret", "env X")  # unbound, as before
    assert plain.scope is None and plain.secret == "s3cret"
    assert "s3cret" not in repr(plain) and "pa ss" not in repr(c)


@pytest.mark.parametrize("text", [
    "https://bob:pw@dav.example.net/ alice:x",   # userinfo in the binding
    "https://dav.example.net/?a=b alice:x",      # query
    "https://dav.example.net/#f alice:x",        # fragment
    "https://dav.example.net:99999/ alice:x",    # bad port
    "https:///nohost alice:x",                   # no host
])
def test_a_binding_that_is_not_an_origin_url_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="bound to") as err:
        parse_credentials(text, "env X")
    assert "alice" not in str(err.value) and "bob" not in str(err.value)


def test_a_binding_with_no_secret_after_it_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as err:
        parse_credentials("https://dav.example.net/ nocolon", "env X")
    assert "nocolon" not in str(err.value)


@pytest.mark.parametrize(("scope", "url", "ok"), [
    ("https://dav.example.net/boot/", "https://dav.example.net/boot/", True),
    ("https://dav.example.net/boot", "https://dav.example.net/boot/prod/", True),
    ("https://DAV.example.net/boot/", "https://dav.example.net:443/boot", True),
    ("https://dav.example.net/", "https://dav.example.net/anything/", True),
    ("https://dav.example.net/boot/", "https://dav.example.net/bootx/", False),
    ("https://dav.example.net/boot/", "https://dav.example.net/", False),
    ("https://dav.example.net/boot/", "https://dav.example.net/boot/../evil/", False),
    ("https://dav.example.net/boot/", "https://dav.example.net/boot/%2E%2e/evil/", False),
    ("https://dav.example.net/boot/", "https://evil.net\\@dav.example.net/boot/", False),
    ("https://dav.example.net/boot/", "https://dav.example.net./boot/", False),
    ("https://dav.example.net/boot/", "https://evil.example.net/boot/", False),
    ("https://dav.example.net/boot/", "https://dav.example.net.evil.net/boot/", False),
    ("https://dav.example.net/boot/", "https://dav.example.net:8443/boot/", False),
    ("https://dav.example.net/boot/", "http://dav.example.net/boot/", False),
    ("s3://bucket/prod", "s3://bucket/prod/", True),
    ("s3://bucket/prod", "s3://other/prod", False),
    ("s3://bucket/prod", "file:///prod", False),
])
def test_what_a_binding_covers(scope: str, url: str, ok: bool) -> None:
    assert credentials_cover(scope, url) is ok


def _publish(pki: Pki, directory: Path, origin: str, creds: str) -> Result:
    return CliRunner().invoke(cli, [
        "publish", str(directory), origin, "--release-id", "r1", "--pki", str(pki.dir),
        "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass),
        "--signer", "boot-signer", "--credentials-env", "TB_ORIGIN_CREDS", "--json"],
        env={"TB_ORIGIN_CREDS": creds})


def test_bound_credentials_reach_their_origin_and_no_other(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """On the real nginx WebDAV origin: credentials bound to another origin stop the
    publish before a single request (nginx logs none); bound to this one, it publishes."""
    release = make_release({"boot.ipxe": b"#!ipxe\necho scoped\n"})
    log = nginx.base / "access.log"
    before = log.read_bytes() if log.exists() else b""
    res = _publish(pki, release, nginx.url, "https://dav.example.net/boot/ alice:s3cret")
    assert res.exit_code == 3, res.output
    assert "bound to origin https://dav.example.net/boot/" in res.output
    assert "s3cret" not in res.output
    assert (log.read_bytes() if log.exists() else b"") == before
    assert not (nginx.root / "boot.ipxe").exists()
    res = _publish(pki, release, nginx.url, f"{nginx.url} alice:s3cret")
    assert res.exit_code == 0, res.output
    assert (nginx.root / "boot.ipxe").read_bytes() == b"#!ipxe\necho scoped\n"


@pytest.mark.parametrize("below", [
    "..%2fother/",      # nginx decodes %2F, then resolves the dot segment: /other/
    "%2e%2e%2Fother/",
    "..;/other/",       # servlet containers drop ;params before resolving
    "..%5cother/",      # a backslash is a separator to some servers
    "%252e%252e/other/",  # decoded twice by a proxy in front
    "%EF%BC%8E%EF%BC%8E/other/",  # fullwidth full stops: NFKC folds them
    "\uff0e\uff0e/other/",
])
def test_encoded_separators_below_the_binding_are_not_covered(below: str) -> None:
    assert not credentials_cover("https://dav.example.net/boot/",
                                 f"https://dav.example.net/boot/{below}")


@pytest.mark.parametrize("url", [
    "https://dav.example.net:443:80/boot/",           # two ports
    "https://dav.example.net:99999/boot/",            # port out of range
    "https://[zz/boot/",                              # broken IPv6 literal
    "https://dav.example.net\uff0fevil.net/boot/",    # fullwidth '/' (NFKC)
    "https://u:s3cret@dav.example.net\uff0fx/boot/",  # ... after a user:password@
])
def test_a_hostile_origin_url_is_a_config_error_not_a_crash(url: str) -> None:
    bound = parse_credentials("https://dav.example.net/boot/ alice:s3cret", "env X")
    for creds in (bound, None):
        res = CliRunner().invoke(cli, ["publish", "list", url, "--ca-file", __file__]
                                 + (["--credentials-env", "TB_C"] if creds else []),
                                 env={"TB_C": "https://dav.example.net/boot/ alice:s3cret"})
        assert res.exit_code == 3, res.output
        assert "s3cret" not in res.output and "internal error" not in res.output


@pytest.mark.parametrize("text", [
    "https://dav.example.net\uff0fx/ alice:s3cret",
    "https://[zz/ alice:s3cret",
])
def test_a_hostile_binding_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="bound to") as err:
        parse_credentials(text, "env X")
    assert "s3cret" not in str(err.value)


def test_an_encoded_dot_segment_cannot_carry_bound_credentials_out_of_their_path(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """nginx decodes %2F and then resolves the '..' it makes: /boot/..%2fother/ is
    /other/. Credentials bound to /boot/ must not be sent there (no request at all)."""
    release = make_release({"boot.ipxe": b"#!ipxe\necho escaped\n"})
    (nginx.root / "boot").mkdir()
    (nginx.root / "other").mkdir()
    log = nginx.base / "access.log"
    before = log.read_bytes() if log.exists() else b""
    res = _publish(pki, release, f"{nginx.url}boot/..%2fother/",
                   f"{nginx.url}boot/ alice:s3cret")
    assert res.exit_code == 3, res.output
    assert "bound to origin" in res.output and "s3cret" not in res.output
    assert (log.read_bytes() if log.exists() else b"") == before
    assert not (nginx.root / "other" / "boot.ipxe").exists()


def test_an_s3_binding_may_name_its_endpoint() -> None:
    c = parse_credentials("s3://boot/prod https://rgw.example.net:8443 AKID:s3cret", "env X")
    assert (c.scope, c.endpoint, c.username, c.secret) == (
        "s3://boot/prod", "https://rgw.example.net:8443", "AKID", "s3cret")
    for text in ("https://dav.example.net/ https://rgw.example.net alice:s3cret",
                 "s3://boot/prod https://rgw.example.net/path AKID:s3cret",
                 "s3://boot/prod https://u:p@rgw.example.net AKID:s3cret"):
        with pytest.raises(ConfigError) as err:
            parse_credentials(text, "env X")
        assert "s3cret" not in str(err.value)


def test_an_ambient_binding_is_a_secret_binding_without_the_secret() -> None:
    """TRUSTBOOT_AMBIENT_CREDENTIALS: the s3:// origin boto3's own credentials may sign
    for, and its endpoint; checked by the rule bound secrets are."""
    b = parse_ambient_binding("s3://boot/prod https://rgw.example.net:8443\n", "env A")
    assert (b.scope, b.endpoint, b.source) == ("s3://boot/prod", "https://rgw.example.net:8443",
                                                "env A")
    check_ambient_scope("s3://boot/prod/x", b, endpoint="https://RGW.example.net:8443/")
    for url, endpoint in (("s3://boot/prod", None), ("s3://boot/prod", "https://rgw.example.net"),
                          ("s3://boot/prodx", "https://rgw.example.net:8443"),
                          ("s3://boot/prod/%2e%2e/x", "https://rgw.example.net:8443"),
                          ("s3://other/prod", "https://rgw.example.net:8443")):
        with pytest.raises(ConfigError, match="ambient AWS credentials") as err:
            check_ambient_scope(url, b, endpoint=endpoint)
        assert err.value.hint and "TRUSTBOOT_AMBIENT_CREDENTIALS='" in err.value.hint
    aws = parse_ambient_binding("s3://boot", "env A")  # the default endpoint only
    assert aws.endpoint is None
    check_ambient_scope("s3://boot/any/prefix", aws)
    with pytest.raises(ConfigError, match=r"not at https://rgw\.example\.net"):
        check_ambient_scope("s3://boot/any", aws, endpoint="https://rgw.example.net")


@pytest.mark.parametrize("text", [
    "",                                                  # empty
    "s3://boot/prod https://rgw.example.net AKID:s3cret",  # a secret after it
    "AKID:s3cret",                                       # only a secret
    "s3://boot/prod AKID:s3cret",                        # a secret instead of an endpoint
    "https://dav.example.net/ ",                         # not s3://
    "s3://boot/prod s3://other",                         # an endpoint that is not https://
    "s3://boot/prod https://rgw.example.net/path",       # an endpoint with a path
    "s3://AKID:s3cret@boot/prod",                        # user@ in the binding
    "s3://boot/prod\nhttps://rgw.example.net",           # two lines
])
def test_a_malformed_ambient_binding_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ambient_binding(text, "environment variable TRUSTBOOT_AMBIENT_CREDENTIALS")
    assert "s3cret" not in str(err.value) and "s3cret" not in (err.value.hint or "")
    assert "TRUSTBOOT_AMBIENT_CREDENTIALS" in str(err.value)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A server a changed --endpoint-url points at: records every request's headers."""

    seen: ClassVar[list[str]] = []

    def _any(self) -> None:
        self.seen.append(str(self.headers))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_DELETE = _any

    def log_message(self, *args: object) -> None:
        pass


def test_s3_credentials_are_not_signed_for_another_endpoint(pki: Pki) -> None:
    """The s3:// URL is the binding, but the requests go to the endpoint, signed with
    the key: a recipe or option pointing --endpoint-url elsewhere got signed requests
    (replayable against the real store while they are fresh). Now nothing is sent."""
    _Recorder.seen.clear()
    with http_server(_Recorder) as url:
        for creds in ("s3://boot/prod AKIDTEST:s3cret",
                      "s3://boot/prod https://rgw.example.net AKIDTEST:s3cret"):
            res = CliRunner().invoke(cli, [
                "publish", "list", "s3://boot/prod", "--endpoint-url", url.rstrip("/"),
                "--unsafe-http", "--ca-file", str(pki.ca), "--credentials-env", "TB_C"],
                env={"TB_C": creds})
            assert res.exit_code == 3, res.output
            assert "not at http://127.0.0.1" in res.output and "s3cret" not in res.output
    assert _Recorder.seen == []


def test_an_s3_binding_with_its_endpoint_reaches_the_store(rgw: RGW) -> None:  # noqa: F811
    """On the real RGW: bound to the bucket and this endpoint, the listing works; the
    same binding without the endpoint (the default one) is refused before a request."""
    bucket = f"tb-scope-{os.getpid()}"
    rgw.client().create_bucket(Bucket=bucket)
    args = ["publish", "list", f"s3://{bucket}/prod", "--endpoint-url", rgw.endpoint,
            "--ca-file", str(rgw.ca_file), "--credentials-env", "TB_C", "--json"]
    secret = f"{rgw.access_key}:{rgw.secret_key}"
    res = CliRunner().invoke(cli, args, env={"TB_C": f"s3://{bucket}/prod {rgw.endpoint} "
                                                     f"{secret}"})
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, args, env={"TB_C": f"s3://{bucket}/prod {secret}"})
    assert res.exit_code == 3 and "the default S3 endpoint" in res.output, res.output
    assert rgw.secret_key not in res.output


@pytest.mark.parametrize("url", ["https://dav.example.net:443:80/boot.ipxe",
                                 "https://[zz/boot.ipxe",
                                 "https://u:s3cret@dav.example.net\uff0fx/boot.ipxe"])
def test_origin_check_of_a_malformed_url_is_a_config_error(pki: Pki, url: str) -> None:
    res = CliRunner().invoke(cli, ["origin", "check", url, "--pki", str(pki.dir)])
    assert res.exit_code == 3, res.output
    assert "not a valid URL" in res.output and "s3cret" not in res.output
