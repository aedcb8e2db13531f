"""Publish to a real nginx WebDAV origin over TLS, read back, switch, roll back."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Nginx, Pki, ReleaseFactory, anon_get, logged_requests
from trustboot.cli.main import cli

ENTRY1 = b"#!ipxe\necho release one\n"
ENTRY2 = b"#!ipxe\necho release two\n"


def publish(pki: Pki, directory: Path, origin: str, release: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "publish", str(directory), origin, "--release-id", release, "--pki", str(pki.dir),
        "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass),
        "--signer", "boot-signer", "--json", *extra])


def test_publish_readback_switch_rollback(pki: Pki, nginx: Nginx,
                                          make_release: ReleaseFactory) -> None:
    r1 = make_release({"boot.ipxe": ENTRY1, "vmlinuz": b"kernel-1" * 1000})
    res = publish(pki, r1, nginx.url, "r1")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["switched"] and out["readback"] == "https"
    assert sorted(out["uploaded"]) == ["boot.ipxe", "boot.ipxe.sig", "release.json", "vmlinuz",
                                       "vmlinuz.sig"]
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY1
    assert anon_get(nginx.url + "releases/r1/vmlinuz", pki).content == b"kernel-1" * 1000
    # the same release again: nothing uploaded, still verified
    again = json.loads(publish(pki, r1, nginx.url, "r1").output)
    assert again["uploaded"] == [] and len(again["skipped"]) == 4
    assert again["switched"] is False and again["previous_live"] == "r1"

    r2 = make_release({"boot.ipxe": ENTRY2, "vmlinuz": b"kernel-2" * 1000})
    res = publish(pki, r2, nginx.url, "r2")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["previous_live"] == "r1"
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY2

    listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, "--pki", str(pki.dir),
                                      "--client-cert", "publisher",
                                      "--client-key-passphrase-file", str(pki.key_pass),
                                      "--json"])
    assert listed.exit_code == 0, listed.output
    infos = {i["id"]: i for i in json.loads(listed.output)}
    assert infos["r2"]["live"] and not infos["r1"]["live"]
    assert infos["r1"]["complete"]
    # published from a directory without a signed release.json: its entry script's
    # signature, read over WebDAV, tells who signed it (tests/publish/test_cli_more.py
    # lists a signed manifest over WebDAV)
    assert infos["r1"]["verified_by"] == "entry" and infos["r1"]["verified"]
    assert infos["r1"]["signer"].startswith("CN=boot-signer")
    # listing is a PROPFIND, which the site allows only with a client certificate: the
    # hint says so (it spoke only of writes, which list does not do)
    anon = CliRunner().invoke(cli, ["publish", "list", nginx.url, "--pki", str(pki.dir)])
    assert anon.exit_code == 1 and "HTTP 403" in anon.output, anon.output
    assert "listing (PROPFIND)" in anon.output and "--client-cert" in anon.output

    rb = CliRunner().invoke(cli, ["publish", "rollback", nginx.url, "r1", "--pki",
                                  str(pki.dir), "--client-cert", "publisher",
                                  "--client-key-passphrase-file", str(pki.key_pass), "--json"])
    assert rb.exit_code == 0, rb.output
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY1
    assert anon_get(nginx.url + "boot.ipxe.sig", pki).content == (r1 / "boot.ipxe.sig").read_bytes()

    pr = CliRunner().invoke(cli, ["publish", "prune", nginx.url, "--keep", "1", "--pki",
                                  str(pki.dir), "--client-cert", "publisher",
                                  "--client-key-passphrase-file", str(pki.key_pass), "--json"])
    assert pr.exit_code == 0, pr.output
    # r1 is live (kept although older); r2 is the newest (kept by --keep 1)
    assert json.loads(pr.output)["deleted"] == []


def _admin(pki: Pki, *args: str) -> Result:
    return CliRunner().invoke(cli, ["publish", *args, "--pki", str(pki.dir), "--client-cert",
                                    "publisher", "--client-key-passphrase-file",
                                    str(pki.key_pass), "--json"])


def _live(pki: Pki, nginx: Nginx) -> list[str]:
    listed = _admin(pki, "list", nginx.url)
    assert listed.exit_code == 0, listed.output
    return [i["id"] for i in json.loads(listed.output) if i["live"]]


def test_the_live_release_among_byte_identical_entries(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """Two releases whose entry pairs are byte-identical (the same script signed again by
    the same RSA key): after a rollback to the older one, `publish list` named the newer
    one live, so a prune could delete the live release and resign re-sign the other."""
    r1 = make_release({"boot.ipxe": ENTRY1, "vmlinuz": b"kernel-1" * 1000})
    r2 = make_release({"boot.ipxe": ENTRY1, "vmlinuz": b"kernel-2" * 1000})
    assert (r1 / "boot.ipxe.sig").read_bytes() == (r2 / "boot.ipxe.sig").read_bytes()
    assert publish(pki, r1, nginx.url, "r1").exit_code == 0
    res = publish(pki, r2, nginx.url, "r2")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["previous_live"] == "r1"
    assert _live(pki, nginx) == ["r2"]
    rb = _admin(pki, "rollback", nginx.url, "r1")
    assert rb.exit_code == 0, rb.output
    assert json.loads(rb.output)["previous_live"] == "r2"
    assert _live(pki, nginx) == ["r1"]
    rb = _admin(pki, "rollback", nginx.url, "r2")
    assert rb.exit_code == 0 and json.loads(rb.output)["previous_live"] == "r1", rb.output
    assert _live(pki, nginx) == ["r2"]
    assert _admin(pki, "rollback", nginx.url, "r1").exit_code == 0
    # --keep 1 keeps the newest (r2) and the live one (r1)
    pr = _admin(pki, "prune", nginx.url, "--keep", "1")
    assert pr.exit_code == 0 and json.loads(pr.output)["deleted"] == [], pr.output
    # a record that lost its meaning (an entry switched by hand) is not believed: the
    # served bytes decide, the newest of the releases that match
    (nginx.root / ".trustboot-live.json").write_bytes(b"{not json")
    assert _live(pki, nginx) == ["r2"]


def test_client_certificate_required_for_writes(pki: Pki, nginx: Nginx,
                                                make_release: ReleaseFactory) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(verify=ctx, trust_env=False) as anon:
        assert anon.put(nginx.url + "evil", content=b"x").status_code == 403
        assert anon.request("MKCOL", nginx.url + "evil/").status_code == 403
        assert anon.request("PROPFIND", nginx.url, headers={"Depth": "1"}).status_code == 403
        assert anon.get(nginx.url + "releases/").status_code in (403, 404)
    assert not (nginx.root / "evil").exists()
    r1 = make_release({"boot.ipxe": ENTRY1})
    # without a client certificate the publish is refused by the origin (exit 1, 403 named)
    res = CliRunner().invoke(cli, ["publish", str(r1), nginx.url, "--release-id", "r1",
                                   "--pki", str(pki.dir)])
    assert res.exit_code == 1, res.output
    assert "403" in res.output and "client certificate" in res.output
    res = publish(pki, r1, nginx.url, "r1")
    assert res.exit_code == 0, res.output
    assert anon_get(nginx.url + "boot.ipxe", pki).status_code == 200
    # dot-files (upload temps, the lock) are never served anonymously
    (nginx.root / ".secret").write_bytes(b"x")
    assert anon_get(nginx.url + ".secret", pki).status_code == 403
    headers = anon_get(nginx.url + "boot.ipxe", pki).headers
    assert headers["cache-control"] == "no-store"
    rel = anon_get(nginx.url + "releases/r1/boot.ipxe", pki).headers
    assert "immutable" in rel["cache-control"]


def _list_requests(pki: Pki, nginx: Nginx) -> list[str]:
    """The requests one `publish list` makes, as nginx logged them (method and path)."""

    def run() -> None:
        listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, "--pki",
                                          str(pki.dir), "--client-cert", "publisher",
                                          "--client-key-passphrase-file", str(pki.key_pass),
                                          "--json"])
        assert listed.exit_code == 0, listed.output
        assert [i["complete"] for i in json.loads(listed.output)] == [True]

    return logged_requests(nginx, pki, run)


def test_list_requests_do_not_grow_with_objects_per_release(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    counts = []
    for n in (1, 8):
        nginx.clear()
        files = {"boot.ipxe": ENTRY1, **{f"linux/k{i}": b"kernel %d" % i for i in range(n)}}
        res = publish(pki, make_release(files), nginx.url, "r1")
        assert res.exit_code == 0, res.output
        requests = _list_requests(pki, nginx)
        # the release ids: one listing of releases/ (PROPFIND Depth 1); no object is
        # fetched or stat-ed one by one
        assert "PROPFIND /releases/" in requests, requests
        assert not [r for r in requests if r.startswith(("GET /releases/r1/linux",
                                                          "HEAD /releases/r1/linux"))]
        counts.append(len(requests))
    assert counts[0] == counts[1], counts


def test_a_listing_that_says_empty_never_deletes_another_release(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pruning r1 climbs the collections it emptied; a PROPFIND that wrongly answered
    "empty" (404, or a 207 without children: a hostile or inconsistent origin) made it
    DELETE releases/ with Depth: infinity, the live r2 with it. No top-level collection
    is deleted any more: the loss is bounded by the release being pruned."""
    from trustboot.publish.webdav import WebDAVOrigin

    for rid, entry in (("r1", ENTRY1), ("r2", ENTRY2)):
        res = publish(pki, make_release({"boot.ipxe": entry, "vmlinuz": rid.encode() * 999}),
                      nginx.url, rid)
        assert res.exit_code == 0, res.output
    monkeypatch.setattr(WebDAVOrigin, "_holds_objects", lambda self, col: False)
    pr = _admin(pki, "prune", nginx.url, "--keep", "1")
    assert pr.exit_code == 0, pr.output
    assert json.loads(pr.output)["deleted"] == ["r1"]
    assert (nginx.root / "releases" / "r2" / "vmlinuz").is_file()
    assert not (nginx.root / "releases" / "r1").exists()
    assert anon_get(nginx.url + "releases/r2/vmlinuz", pki).content == b"r2" * 999


def test_a_read_back_without_tls_checks_says_so(pki: Pki, nginx: Nginx,
                                               make_release: ReleaseFactory) -> None:
    """--unsafe-no-tls-verify also governs the read-back, which then said "over HTTPS as
    iPXE" ("readback": "https") although iPXE might refuse the origin's certificate."""
    r = make_release({"boot.ipxe": ENTRY1})
    res = publish(pki, r, nginx.url, "u1", "--unsafe-no-tls-verify")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["readback"] == "https-unverified", doc
    text = CliRunner().invoke(cli, [
        "publish", str(r), nginx.url, "--release-id", "u1", "--pki", str(pki.dir),
        "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass),
        "--signer", "boot-signer", "--unsafe-no-tls-verify"])
    assert text.exit_code == 0, text.output
    assert "without checking the origin's certificate" in text.output, text.output
