"""An s3:// recipe without origin.credentials: the ambient AWS credentials go only where
the operator bound them.

boto3 signs every request with the credentials it finds itself (AWS_* variables,
AWS_PROFILE and ~/.aws, a container or instance role: the CI job's), and a recipe from a
pull request chooses the bucket and the endpoint. Unbound, that let a recipe have the
job's access key id and session token sent to a host of its choosing (a TLS server of
the recipe's CA that records what it is sent), or publish into another bucket those
credentials may write (the real Ceph RGW). Now such a recipe is refused before any
request unless the operator binds the ambient credentials to its origin
(TRUSTBOOT_AMBIENT_CREDENTIALS='s3://BUCKET/PREFIX https://ENDPOINT', or
--ambient-credentials) or passes --unsafe-unbound-credentials; a dry run still signs
nothing and says what the real run would refuse. Commands that take the origin from the
operator's command line (publish, resign) keep boto3's chain as it is. (Here, beside the
RGW fixture's pki: the store's certificate and the lab's signer come from one CA.)"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner, Result

pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")

from tests.publish.conftest import Pki, no_ambient_aws, origin_ca_server
from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from tests.release.lab import isolate_env, make_lab
from trustboot.cli.main import cli

AKID = "AKIAAMBIENTCIJOB0001"
SECRET = "ambientSECRETkey/0123456789abcdefghijk"
TOKEN = "FwoGZXIvYXdzEAMBIENTSESSIONTOKENxyz"
IMAGES = {"vmlinuz": b"kernel " * 3000, "initrd.img": b"initrd " * 1000}
BINDING = "TRUSTBOOT_AMBIENT_CREDENTIALS"


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_env(monkeypatch, tmp_path, BINDING)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Only what a test sets of boto3's chain (tests.publish.conftest.no_ambient_aws)."""
    return no_ambient_aws(monkeypatch, tmp_path)


@pytest.fixture
def job(aws: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A CI job's session credentials in the environment (and nothing else of boto3's)."""
    aws.setenv("AWS_ACCESS_KEY_ID", AKID)
    aws.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    aws.setenv("AWS_SESSION_TOKEN", TOKEN)
    return aws


class _Recorder(http.server.BaseHTTPRequestHandler):
    """The recipe's endpoint: records each request's method and headers, then refuses."""

    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def _any(self) -> None:
        self.seen.append((self.command, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def recorder(pki: Pki, tmp_path: Path) -> Iterator[str]:
    """A TLS server with a certificate of the recipe's CA (a hostile recipe brings the
    CA file that makes its host verify): its URL."""
    _Recorder.seen.clear()
    with origin_ca_server(_Recorder, pki, tmp_path) as url:
        yield url


def _hostile_lab(pki: Pki, tmp_path: Path, url: str) -> tuple[Path, str]:
    """A recipe for s3://boot/prod whose endpoint is the recorder, no origin.credentials,
    a {date} id (a dry run would list the origin if it could): (recipe, endpoint)."""
    endpoint = url.rstrip("/")
    recipe = make_lab(tmp_path / "lab", pki, "s3://boot/prod", images=IMAGES,
                      client_cert=False, release_id="{date}-{digest8}",
                      extra=f", endpoint: '{endpoint}', public_url: '{url}boot/prod/'")
    return recipe, endpoint


def _release(recipe: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, ["release", str(recipe), *args], env=env)


def _line_of(recipe: Path, text: str) -> int:
    return next(i for i, line in enumerate(recipe.read_text().splitlines(), 1)
                if text in line)


def _no_secret(res: Result) -> None:
    assert SECRET not in res.output and TOKEN not in res.output


def test_an_s3_recipe_without_credentials_is_refused_before_any_request(
        pki: Pki, tmp_path: Path, job: pytest.MonkeyPatch) -> None:
    """The CI job's session credentials in the environment, the recipe's endpoint a host
    of its choosing: refused (exit 3) at the recipe's origin line, naming what was
    refused and the binding to set; the recorder never hears from us."""
    with recorder(pki, tmp_path) as url:
        recipe, endpoint = _hostile_lab(pki, tmp_path, url)
        line = _line_of(recipe, "origin:")
        for args in ([], ["--json"]):
            res = _release(recipe, *args)
            assert res.exit_code == 3, (args, res.output)
            assert f"lab.yaml:{line}: origin.url s3://boot/prod at origin.endpoint " \
                   f"{endpoint}: the recipe gives no origin.credentials, so every request " \
                   "would be signed with the ambient AWS credentials" in res.stderr, res.stderr
            assert "nothing was sent" in res.stderr
            assert f"{BINDING}='s3://boot/prod {endpoint}'" in res.stderr
            assert "--unsafe-unbound-credentials" in res.stderr
            _no_secret(res)
        assert _Recorder.seen == []


@pytest.mark.parametrize("binding", [
    "s3://ops/prod {endpoint}",          # another bucket
    "s3://boot/staging {endpoint}",      # another prefix of the bucket
    "s3://boot/prod https://rgw.example.net",  # the bucket, at the operator's store
    "s3://boot/prod",                    # the default endpoint (AWS) only
])
def test_ambient_credentials_bound_elsewhere_are_refused(
        pki: Pki, tmp_path: Path, job: pytest.MonkeyPatch, binding: str) -> None:
    """A binding covers its origin (and below) at its endpoint only, as a bound secret's
    does: any other bucket, prefix or endpoint is refused at the recipe's line, in a dry
    run too (the operator set a binding the recipe does not match)."""
    with recorder(pki, tmp_path) as url:
        recipe, endpoint = _hostile_lab(pki, tmp_path, url)
        line = _line_of(recipe, "origin:")
        job.setenv(BINDING, binding.format(endpoint=endpoint))
        for args in ([], ["--dry-run"], ["--unsafe-unbound-credentials"]):
            res = _release(recipe, *args)
            assert res.exit_code == 3, (args, res.output)
            assert f"lab.yaml:{line}: the ambient AWS credentials (bound by environment " \
                   f"variable {BINDING}) are bound to " in res.stderr, res.stderr
            _no_secret(res)
        assert _Recorder.seen == []


def test_the_operator_binding_or_the_unsafe_flag_is_what_lets_them_sign(
        pki: Pki, tmp_path: Path, job: pytest.MonkeyPatch) -> None:
    """With a binding that covers the recipe's origin (by the variable, or the option)
    the ambient credentials sign its requests; without one only
    --unsafe-unbound-credentials does, and it warns."""
    with recorder(pki, tmp_path) as url:
        recipe, endpoint = _hostile_lab(pki, tmp_path, url)

        res = _release(recipe, "--unsafe-unbound-credentials")
        assert res.exit_code == 1, res.output  # the recorder refuses
        assert "warning: --unsafe-unbound-credentials" in res.stderr
        assert "ambient AWS credentials" in res.stderr
        assert _Recorder.seen, "the opt-in is what sent them"
        assert all(AKID in h["authorization"] and h["x-amz-security-token"] == TOKEN
                   for _, h in _Recorder.seen)

        for args, env in ((["--ambient-credentials", f"s3://boot {endpoint}"], {}),
                          ([], {BINDING: f"s3://boot/ {endpoint}/"})):
            _Recorder.seen.clear()
            res = _release(recipe, *args, env=env)
            assert res.exit_code == 1, res.output
            assert "warning" not in res.stderr
            assert _Recorder.seen and all(AKID in h["authorization"]
                                          for _, h in _Recorder.seen)
        # the option's binding is named as such when it does not cover the recipe
        res = _release(recipe, "--ambient-credentials", f"s3://ops {endpoint}")
        assert res.exit_code == 3, res.output
        assert "(bound by --ambient-credentials) are bound to origin s3://ops, not to " \
               "s3://boot/prod" in res.stderr, res.stderr


def test_recipe_credentials_carry_no_ambient_session_token(
        pki: Pki, tmp_path: Path, aws: pytest.MonkeyPatch) -> None:
    """A recipe's bound origin.credentials replace the whole chain: the job's session
    token in the environment is not added to their requests."""
    aws.setenv("AWS_SESSION_TOKEN", TOKEN)
    with recorder(pki, tmp_path) as url:
        endpoint = url.rstrip("/")
        aws.setenv("TRUSTBOOT_S3", f"s3://boot/prod {endpoint} AKIDRECIPE:recipe-secret")
        recipe = make_lab(tmp_path / "lab", pki, "s3://boot/prod", images=IMAGES,
                          client_cert=False,
                          extra=f", endpoint: '{endpoint}', public_url: '{url}boot/prod/', "
                                "credentials: {env: TRUSTBOOT_S3}")
        res = _release(recipe)
        assert res.exit_code == 1, res.output
        assert _Recorder.seen
        for _, headers in _Recorder.seen:
            assert "AKIDRECIPE" in headers["authorization"]
            assert "x-amz-security-token" not in headers


def test_a_dry_run_is_unchanged_and_says_what_a_real_run_refuses(
        pki: Pki, tmp_path: Path, aws: pytest.MonkeyPatch) -> None:
    """What a reviewer runs on a pull request: still exit 0 with nothing sent (an s3://
    store is not listed), and a note that the real run is refused and why."""
    aws.setenv("AWS_ACCESS_KEY_ID", AKID)
    aws.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with recorder(pki, tmp_path) as url:
        recipe, endpoint = _hostile_lab(pki, tmp_path, url)
        res = _release(recipe, "--dry-run")
        assert res.exit_code == 0, res.output
        assert "a real run would be refused" in res.stderr
        assert f"{BINDING}='s3://boot/prod {endpoint}'" in res.stderr
        res = _release(recipe, "--dry-run", "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert any("a real run would be refused" in w for w in doc["warnings"])
        assert "a dry run sends no credentials" in doc["plan"]["origin_unreachable"]
        # bound to it: no note, and still nothing sent
        res = _release(recipe, "--dry-run", "--json",
                       env={BINDING: f"s3://boot/prod {endpoint}"})
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["warnings"] == []
        _no_secret(res)
    assert _Recorder.seen == []


def _keys(rgw: RGW, bucket: str) -> list[str]:  # noqa: F811
    listing = rgw.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _umask0(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`trustboot ARGS` under umask 000, from this tree (not an installed copy)."""
    tree = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "trustboot", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, preexec_fn=lambda: os.umask(0),
                          env={**os.environ, "PYTHONPATH": tree})


def test_on_rgw_ambient_credentials_publish_only_where_the_operator_bound_them(
        pki: Pki, rgw: RGW, tmp_path: Path, aws: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The store's keys as the job's ambient credentials, two buckets they may write: a
    recipe pointing at the other bucket is refused (unbound, or bound to ours) and that
    bucket stays empty; bound to ours, the release publishes there, under umask 000 as
    under any umask. publish and resign, whose origin is the operator's argument, keep
    using the chain with no binding."""
    ours, other = f"tb-ambient-{os.getpid()}", f"tb-ambient-other-{os.getpid()}"
    for bucket in (ours, other):
        rgw.client().create_bucket(Bucket=bucket)
    aws.setenv("AWS_ACCESS_KEY_ID", rgw.access_key)
    aws.setenv("AWS_SECRET_ACCESS_KEY", rgw.secret_key)
    state = tmp_path / "state"
    aws.setenv("TRUSTBOOT_PUBLISH_CACHE", str(state / "publish-cache.json"))
    lab = tmp_path / "lab"

    def recipe_for(bucket: str) -> Path:
        return make_lab(lab, pki, f"s3://{bucket}/boot", images=IMAGES, client_cert=False,
                        extra=f", endpoint: '{rgw.endpoint}', "
                              f"public_url: '{rgw.endpoint}/{bucket}/boot/'")

    recipe = recipe_for(other)
    line = _line_of(recipe, "origin:")
    res = _release(recipe)
    assert res.exit_code == 3 and f"lab.yaml:{line}: origin.url s3://{other}/boot" \
        in res.stderr, res.output
    aws.setenv(BINDING, f"s3://{ours}/boot {rgw.endpoint}")
    res = _release(recipe)
    assert res.exit_code == 3 and f"are bound to origin s3://{ours}/boot, not to " \
        f"s3://{other}/boot" in res.stderr, res.output
    assert _keys(rgw, other) == []

    recipe = recipe_for(ours)
    # under umask 000: refused the same way, before anything is created or sent
    aws.setenv(BINDING, f"s3://{other}/boot {rgw.endpoint}")
    proc = _umask0("release", str(recipe), cwd=lab)
    assert proc.returncode == 3 and f"not to s3://{ours}/boot" in proc.stderr, proc.stderr
    assert _keys(rgw, ours) == [] and not state.exists()
    aws.setenv(BINDING, f"s3://{ours}/boot {rgw.endpoint}")
    proc = _umask0("release", str(recipe), "--json", cwd=lab)
    assert proc.returncode == 0, proc.stderr
    release = json.loads(proc.stdout)["release"]
    assert f"boot/releases/{release}/release.json" in _keys(rgw, ours)
    assert rgw.secret_key not in proc.stdout + proc.stderr

    aws.delenv(BINDING)
    common = ["--pki", str(lab / "pki"), "--endpoint-url", rgw.endpoint, "--json"]
    res = CliRunner().invoke(cli, ["publish", "list", f"s3://{ours}/boot", *common])
    assert res.exit_code == 0, res.output
    assert [r["id"] for r in json.loads(res.stdout) if r["live"]] == [release]
    res = CliRunner().invoke(cli, ["resign", f"s3://{ours}/boot", "--key", "boot-signer",
                                   "--passphrase-file", str(lab / "key.pass"), *common])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["changed"] is False  # already signed by boot-signer
    assert _keys(rgw, other) == []
