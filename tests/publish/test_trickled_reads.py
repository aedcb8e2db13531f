"""An origin trickling its answers (each byte in time for the per-read timeout) is given up
on by what came, not by the cap: the head within the timeout (and a second), then the
body at the slowest accepted rate (publish.deadline.MIN_RATE, here the real one). A read's
deadline was what its largest allowed answer may take: a release.json (4 MiB cap) held a
command for 66 s, an entry script (16 MiB) for 258 s, whatever --timeout said.

Real nginx behind the fault proxy, which trickles the answers of the paths a test names."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.publish.conftest import KEY_PASS, Nginx, Pki, ReleaseFactory, run_cli
from tests.publish.faultproxy import ProxyState, Trickle, fault_proxy
from trustboot.cli.main import cli
from trustboot.errors import OperationalError
from trustboot.publish.manifest import MAX_MANIFEST_BYTES
from trustboot.publish.origin import OriginOptions
from trustboot.publish.webdav import WebDAVOrigin

ENTRY = b"#!ipxe\nimgfetch --name k vmlinuz\nimgverify k vmlinuz.sig\nboot k\n"
# the proxy stops trickling after this long, so the old code's tests end too
TRICKLE_FOR = 9.0
MODES = ["slow-body", "slow-head"]


@pytest.fixture
def origin_url(pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> str:
    """nginx with one release (r1) published and live."""
    r = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"k" * 1000})
    run_cli("publish", str(r), nginx.url, "--release-id", "r1", "--pki", str(pki.dir),
            "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass))
    return nginx.url


@contextlib.contextmanager
def trickling(pki: Pki, nginx: Nginx, path: str, mode: str) -> Iterator[tuple[str, ProxyState]]:
    """The fault proxy in front of ``nginx``, trickling GETs of ``path`` (a regex): a
    byte every half second after a prompt head, or the head too."""
    with fault_proxy(nginx.url, cert=nginx.base / "server-chain.pem", key=pki.key("origin"),
                     key_password=KEY_PASS, ca=pki.ca, client_cert=pki.cert("publisher"),
                     client_key=pki.key("publisher"), client_password=KEY_PASS
                     ) as (url, state):
        state.trickles.append(Trickle("GET", path, head=mode == "slow-head", interval=0.5,
                                      for_seconds=TRICKLE_FOR))
        yield url, state


@pytest.mark.parametrize("mode", MODES)
def test_a_trickled_object_is_given_up_on_by_what_came(pki: Pki, nginx: Nginx,
                                                        origin_url: str, mode: str) -> None:
    """Origin.read (release.json, manifests, the entry script, the switch journal)."""
    with trickling(pki, nginx, r"/releases/r1/release\.json", mode) as (url, _state), \
            WebDAVOrigin(url, OriginOptions(ca_file=pki.ca, timeout=1.0, retries=0)) as o:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="served too slowly") as caught:
            b"".join(o.read("releases/r1/release.json", max_size=MAX_MANIFEST_BYTES))
        took = time.monotonic() - started
    assert f"{url}releases/r1/release.json" in caught.value.message
    assert took < 4, took  # 1 s timeout, a second for the head: not 65 s


@pytest.mark.parametrize("mode", MODES)
def test_publish_rollback_gives_up_on_a_trickled_manifest(pki: Pki, nginx: Nginx,
                                                          origin_url: str, mode: str) -> None:
    with trickling(pki, nginx, r"/releases/r1/release\.json", mode) as (url, _state):
        started = time.monotonic()
        res = CliRunner().invoke(cli, [
            "publish", "rollback", url, "r1", "--pki", str(pki.dir), "--client-cert",
            "publisher", "--client-key-passphrase-file", str(pki.key_pass), "--timeout", "2"])
        took = time.monotonic() - started
    assert res.exit_code == 1, res.output
    assert f"{url}releases/r1/release.json was served too slowly" in res.output
    assert took < 7, took


@pytest.mark.parametrize("command", ["prune", "resign"])
def test_prune_and_resign_give_up_on_a_trickled_manifest(pki: Pki, nginx: Nginx,
                                                         origin_url: str, command: str) -> None:
    """Every manifest unreadable, the live release cannot be told: prune said the entry
    serves none of the releases, resign that it serves no release (configuration errors,
    exit 3), after 66 s per release."""
    args = (["publish", "prune", "--keep", "1"] if command == "prune" else
            ["resign", "--key", "other-signer", "--passphrase-file", str(pki.key_pass)])
    with trickling(pki, nginx, r"/releases/r1/release\.json", "slow-body") as (url, _state):
        started = time.monotonic()
        res = CliRunner().invoke(cli, [
            *args, url, "--pki", str(pki.dir), "--client-cert", "publisher",
            "--client-key-passphrase-file", str(pki.key_pass), "--timeout", "2"])
        took = time.monotonic() - started
    assert res.exit_code == 1, res.output
    assert "the manifest of release r1 could not be read" in res.output
    assert f"{url}releases/r1/release.json was served too slowly" in res.output
    assert took < 7, took
    assert (nginx.root / "releases/r1/release.json").exists()


@pytest.mark.parametrize("mode", MODES)
def test_publish_list_gives_up_on_a_trickled_entry(pki: Pki, nginx: Nginx, origin_url: str,
                                                   mode: str) -> None:
    """The live release is found by reading the entry script (a 16 MiB cap)."""
    with trickling(pki, nginx, r"/boot\.ipxe", mode) as (url, _state):
        started = time.monotonic()
        res = CliRunner().invoke(cli, [
            "publish", "list", url, "--pki", str(pki.dir), "--client-cert", "publisher",
            "--client-key-passphrase-file", str(pki.key_pass), "--timeout", "2"])
        took = time.monotonic() - started
    assert res.exit_code == 1, res.output
    assert f"{url}boot.ipxe was served too slowly" in res.output
    assert took < 7, took


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("trickled", ["boot.ipxe", "boot.ipxe.sig"])
def test_origin_check_gives_up_on_a_trickled_entry(pki: Pki, nginx: Nginx, origin_url: str,
                                                   mode: str, trickled: str) -> None:
    """The read-back's GETs (http.client, the watchdog): the entry (16 MiB cap) and its
    signature (4 MiB)."""
    with trickling(pki, nginx, "/" + trickled.replace(".", r"\."), mode) as (url, _state):
        started = time.monotonic()
        res = CliRunner().invoke(cli, ["origin", "check", url + "boot.ipxe", "--pki",
                                       str(pki.dir), "--timeout", "2"])
        took = time.monotonic() - started
    assert res.exit_code == 1, res.output
    assert f"{url}{trickled} was served too slowly" in res.output
    assert took < 7, (took, res.output)


def test_an_object_cut_short_is_an_operational_failure(pki: Pki, nginx: Nginx,
                                                      origin_url: str) -> None:
    """An origin closing the connection in the middle of an object (here the proxy
    stopping its trickle) ended `publish rollback` as an internal error (exit 70: an
    httpx error escaped the body of Origin.read)."""
    with trickling(pki, nginx, r"/releases/r1/release\.json", "slow-body") as (url, state):
        state.trickles[0] = Trickle("GET", r"/releases/r1/release\.json", interval=0.01,
                                    for_seconds=0.2)
        res = CliRunner().invoke(cli, [
            "publish", "rollback", url, "r1", "--pki", str(pki.dir), "--client-cert",
            "publisher", "--client-key-passphrase-file", str(pki.key_pass), "--timeout", "2"])
    assert res.exit_code == 1, res.output
    assert f"reading {url}releases/r1/release.json: the connection broke" in res.output


def test_a_healthy_origin_is_read_as_before(pki: Pki, nginx: Nginx, origin_url: str,
                                            tmp_path: Path) -> None:
    """The positive control: nothing trickled, every command above succeeds."""
    with trickling(pki, nginx, "/nothing", "slow-body") as (url, _state):
        res = CliRunner().invoke(cli, ["origin", "check", url + "boot.ipxe", "--pki",
                                       str(pki.dir), "--timeout", "2"])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(cli, [
            "publish", "rollback", url, "r1", "--pki", str(pki.dir), "--client-cert",
            "publisher", "--client-key-passphrase-file", str(pki.key_pass), "--timeout", "2"])
        assert res.exit_code == 0, res.output
