"""A CA with a code-signing and a TLS server certificate (made once per session), and a
recipe directory with an HTTPS server in front of its file:// origin."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from trustboot.ca.profiles import CAOptions
from trustboot.ca.store import CertificateAuthority
from trustboot.keys.keyfile import load_key
from trustboot.release.serve import serve_https
from trustboot.secrets import constant

PASSPHRASE = b"release tests passphrase"


@pytest.fixture(autouse=True)
def _publish_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own digest/read-back memo (never the user's)."""
    monkeypatch.setenv("TRUSTBOOT_PUBLISH_CACHE", str(tmp_path / "publish-cache.json"))


@pytest.fixture
def no_ipxe_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No iPXE tree from the environment (releases without firmware, or prebuilt), and a
    build cache of the test's own."""
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "cache"))


def release(*args: str) -> tuple[int, str, str]:
    """`trustboot release ARGS`: exit code, stdout, stderr."""
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    r = CliRunner().invoke(cli, ["release", *args])
    return r.exit_code, r.stdout, r.stderr


SIGNER = "release-signer"


@dataclass
class Lab:
    dir: Path  # the recipe's directory (pki/, images/, origin/ inside)
    pki: Path
    origin: Path
    public: str  # https://127.0.0.1:PORT/
    passfile: Path

    def recipe(self, body: str = "", *, name: str = "r.yaml", entries: str | None = None,
               release: str = "release: {id: '{name}-{digest12}', min_signer_lifetime: 30d}",
               ipxe: str = "") -> Path:
        entries = entries if entries is not None else (
            "entries:\n"
            "  - name: linux\n"
            "    title: Test Linux\n"
            "    kernel: images/vmlinuz\n"
            "    initrds: [images/initrd.img]\n"
            "    cmdline: console=ttyS0 quiet\n")
        text = (
            "version: 1\nname: lab\nca: {home: pki}\n"
            f"signer: {{key: {SIGNER}, passphrase: {{file: pass.txt}}}}\n"
            f"origin: {{url: 'file://{self.origin}', public_url: '{self.public}', "
            "ca_file: pki/ca.crt}\n"
            f"{ipxe}\n{entries}{release}\n{body}")
        path = self.dir / name
        path.write_text(text)
        return path


@pytest.fixture(scope="session")
def session_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("release-ca") / "pki"
    pw = constant(PASSPHRASE)
    now = dt.datetime.now(dt.UTC)
    ca, _ = CertificateAuthority.init(home, pw, common_name="release test CA",
                                      key_type="rsa-3072", options=CAOptions(), now=now)
    ca.issue("codesign", SIGNER, pw, pw, key_type="rsa-3072", now=now)
    ca.issue("codesign", "short-signer", pw, pw, key_type="rsa-3072", days=10, now=now)
    ca.issue("server", "origin", pw, pw, sans=["127.0.0.1", "10.0.2.2"], key_type="rsa-3072",
             now=now)
    return home


@contextlib.contextmanager
def serve_over_https(home: Path, directory: Path, scratch: Path) -> Iterator[int]:
    """``directory`` served over HTTPS on 127.0.0.1 with the "origin" server certificate
    of the lab CA in ``home``: its port."""
    ca = CertificateAuthority.open(home)
    server = ca.get("origin")
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM)
                     for c in (server.load_cert(), ca.issuing_cert))
    key = load_key(server.key_path, constant(PASSPHRASE), "server key")
    with serve_https(directory, cert_chain_pem=chain, key=key, scratch=scratch) as port:
        yield port


@pytest.fixture
def lab(session_ca: Path, tmp_path: Path) -> Iterator[Lab]:
    d = tmp_path / "lab"
    (d / "images").mkdir(parents=True)
    shutil.copytree(session_ca, d / "pki")
    (d / "images" / "vmlinuz").write_bytes(b"kernel " * 5000)
    (d / "images" / "initrd.img").write_bytes(b"initrd " * 9000)
    passfile = d / "pass.txt"
    passfile.write_bytes(PASSPHRASE + b"\n")
    passfile.chmod(0o600)
    origin = d / "origin"
    origin.mkdir()
    with serve_over_https(d / "pki", origin, tmp_path / "scratch") as port:
        yield Lab(dir=d, pki=d / "pki", origin=origin, public=f"https://127.0.0.1:{port}/",
                  passfile=passfile)


# The publish branch's real nginx WebDAV/TLS origin (session-wide) and its pki.
from tests.publish.conftest import nginx, nginx_origin, pki  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _client_cert_bound_to_nginx(request: pytest.FixtureRequest,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A test on the session's nginx releases lab recipes that write with the client
    certificate publisher (tests.release.lab): the operator binds it to that origin, and
    gives the CA that authenticates the origin (in place of the recipe's ca_file), as a CI
    job would (test_client_cert_binding and test_origin_ca check the bindings themselves)."""
    if "nginx" in request.fixturenames:
        from trustboot.publish.origin import CLIENT_CERT_ENV
        from trustboot.release.plan import ORIGIN_CA_ENV
        monkeypatch.setenv(CLIENT_CERT_ENV, f"{request.getfixturevalue('nginx').url} publisher")
        monkeypatch.setenv(ORIGIN_CA_ENV, str(request.getfixturevalue("pki").ca))


@contextlib.contextmanager
def origin_lost_after_the_claim() -> Iterator[None]:
    """Inside: a publish loses the origin right after release.json claimed the id (the
    signatures are up by then, the other objects not): a run killed just after its claim."""
    from trustboot.errors import OperationalError
    from trustboot.publish import pipeline

    real = pipeline._upload

    def cut_off(*args: object, **kwargs: object) -> object:
        claim = kwargs.get("claim")

        def claim_then_fail() -> None:
            assert callable(claim)
            claim()
            raise OperationalError("connection to the origin lost (test)")

        return real(*args, **{**kwargs, "claim": claim_then_fail})  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline, "_upload", cut_off)
        yield
