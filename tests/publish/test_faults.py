"""Faults against the real nginx origin: bad TLS, auth, missing collections, 5xx bursts,
a full disk, tampering after upload, SIGKILL mid-publish, concurrent publishes, and the
mixed old-script/new-signature window of a switch."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.publish.conftest import (
    CA_PASS,
    KEY_PASS,
    Nginx,
    Pki,
    ReleaseFactory,
    anon_get,
    start_nginx,
    stop_nginx,
)
from tests.publish.faultproxy import Fault, ProxyState, fault_proxy
from trustboot.cli.main import cli
from trustboot.cli.verify import load_trust
from trustboot.errors import VerificationError
from trustboot.keys.keyfile import load_key
from trustboot.publish.origin import OriginOptions, open_origin
from trustboot.publish.pipeline import publish_release, rollback, scan_directory
from trustboot.publish.readback import Reader, Trust, judge
from trustboot.publish.webdav import STAGING

ENTRY_A = b"#!ipxe\necho release A\n"
ENTRY_B = b"#!ipxe\necho release B, a little longer\n"


def publish(pki: Pki, directory: Path, origin: str, release: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "publish", str(directory), origin, "--release-id", release, "--pki", str(pki.dir),
        "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass),
        "--json", "--retries", "2", *extra])


def trust_of(pki: Pki) -> Trust:
    return Trust(tuple(load_trust((), pki.dir)), (), "boot-signer")


def options_of(pki: Pki) -> OriginOptions:
    return OriginOptions(ca_file=pki.ca, client_cert=pki.cert("publisher"),
                         client_key=pki.key("publisher"),
                         client_key_passphrase=KEY_PASS.encode(), retries=2)


@pytest.fixture
def proxy(pki: Pki, nginx: Nginx) -> Iterator[tuple[str, ProxyState]]:
    chain = nginx.base / "server-chain.pem"
    with fault_proxy(nginx.url, cert=chain, key=pki.key("origin"), key_password=KEY_PASS,
                     ca=pki.ca, client_cert=pki.cert("publisher"),
                     client_key=pki.key("publisher"), client_password=KEY_PASS) as p:
        yield p


# --- TLS -------------------------------------------------------------------------------

def test_wrong_ca_is_a_verification_failure(pki: Pki, nginx: Nginx,
                                            make_release: ReleaseFactory,
                                            tmp_path: Path) -> None:
    from tests.cms.pki import make_material

    other = make_material(tmp_path / "other")
    r = make_release({"boot.ipxe": ENTRY_A})
    res = publish(pki, r, nginx.url, "r1", "--ca-file", str(other.directory / "root.pem"))
    assert res.exit_code == 4, res.output
    assert "does not verify" in res.output
    assert list(nginx.root.iterdir()) == []


def _server_cert(pki: Pki, tmp_path: Path, *, name: str, expired: bool) -> tuple[Path, Path]:
    issuing = load_key(pki.dir / "private" / "issuing-ca.key", lambda _w: CA_PASS.encode(),
                       "issuing CA")
    issuer = x509.load_pem_x509_certificate((pki.dir / "issuing-ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    nb, na = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (
        now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    import ipaddress

    san: list[x509.GeneralName] = [x509.DNSName(name)]
    if name == "127.0.0.1":
        san = [x509.IPAddress(ipaddress.ip_address(name))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(issuing, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                          + issuer.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("case", ["wrong-name", "expired"])
def test_bad_origin_certificate(case: str, pki: Pki, nginx: Nginx,
                                make_release: ReleaseFactory, tmp_path: Path) -> None:
    name = "wrong.example.net" if case == "wrong-name" else "127.0.0.1"
    cert, key = _server_cert(pki, tmp_path, name=name, expired=case == "expired")
    with fault_proxy(nginx.url, cert=cert, key=key, key_password=None, ca=pki.ca,
                     client_cert=pki.cert("publisher"), client_key=pki.key("publisher"),
                     client_password=KEY_PASS) as (url, state):
        r = make_release({"boot.ipxe": ENTRY_A})
        res = publish(pki, r, url, "r1")
        assert res.exit_code == 4, res.output
        assert "does not verify" in res.output
        assert ("expired" in res.output) == (case == "expired")
        assert state.seen == []  # not one request got through
        check = CliRunner().invoke(cli, ["origin", "check", url + "boot.ipxe", "--pki",
                                         str(pki.dir), "--json"])
        assert check.exit_code == 4, check.output


def test_a_stale_entry_served_after_the_switch_is_caught(
        pki: Pki, nginx: Nginx, proxy: tuple[str, ProxyState],
        make_release: ReleaseFactory) -> None:
    """A cache in front of the origin keeps serving the previous entry pair after the
    switch. That pair verifies (it is the old release, validly signed), so only comparing
    the served entry with the one just published shows that clients do not get it: the
    publish must fail instead of reporting the release live."""
    url, state = proxy
    ra = make_release({"boot.ipxe": ENTRY_A})
    assert publish(pki, ra, nginx.url, "ra").exit_code == 0
    state.stale["/boot.ipxe"] = ENTRY_A
    state.stale["/boot.ipxe.sig"] = (ra / "boot.ipxe.sig").read_bytes()
    rb = make_release({"boot.ipxe": ENTRY_B})
    res = publish(pki, rb, url, "rb")
    assert res.exit_code == 4, res.output
    assert "after switching boot.ipxe to release rb" in res.output
    assert "entry-after-switch" in res.output
    # behind the cache the origin did switch: the failure is about what clients get
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY_B


# --- HTTP errors -----------------------------------------------------------------------

def test_401_then_bearer_credentials_from_env(pki: Pki, proxy: tuple[str, ProxyState],
                                              make_release: ReleaseFactory,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, state = proxy
    state.require_auth = "Bearer t0ken"
    r = make_release({"boot.ipxe": ENTRY_A})
    res = publish(pki, r, url, "r1")
    assert res.exit_code == 1, res.output
    assert "401" in res.output and "credentials" in res.output
    monkeypatch.setenv("TB_ORIGIN_TOKEN", "bearer:t0ken")
    res = publish(pki, r, url, "r1", "--credentials-env", "TB_ORIGIN_TOKEN")
    assert res.exit_code == 0, res.output
    assert "t0ken" not in res.output


def test_403_on_write(pki: Pki, proxy: tuple[str, ProxyState],
                      make_release: ReleaseFactory) -> None:
    url, state = proxy
    state.faults.append(Fault("PUT", 403, 100))
    res = publish(pki, make_release({"boot.ipxe": ENTRY_A}), url, "r1")
    assert res.exit_code == 1, res.output
    assert "403" in res.output and "client certificate" in res.output


def test_missing_collection(pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    res = publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url + "no/such/", "r1")
    assert res.exit_code == 1, res.output
    assert "409" in res.output or "404" in res.output
    assert "collection" in res.output


def test_5xx_burst_is_retried_then_fails_clearly(pki: Pki, proxy: tuple[str, ProxyState],
                                                 make_release: ReleaseFactory) -> None:
    url, state = proxy
    r = make_release({"boot.ipxe": ENTRY_A, "vmlinuz": b"k" * 5000})
    state.faults.append(Fault("PUT", 503, 2))  # a short burst: retried through
    res = publish(pki, r, url, "r1")
    assert res.exit_code == 0, res.output
    assert sum(1 for m, _p, s in state.seen if m == "PUT" and s == 503) == 2
    state.faults.append(Fault("GET|HEAD|PUT|MKCOL|MOVE|PROPFIND", 502, 1000))
    r2 = make_release({"boot.ipxe": ENTRY_B})
    res = publish(pki, r2, url, "r2")
    assert res.exit_code == 1, res.output
    assert "HTTP 502" in res.output and "3 attempt(s)" in res.output


def test_disk_full_on_nginx(pki: Pki, make_release: ReleaseFactory,
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """client_max_body_size stands in for a full disk everywhere (413)."""
    small = start_nginx(pki, tmp_path_factory.mktemp("nginx-small"),
                        extra_args=("--max-body-size", "4k"))
    try:
        r = make_release({"boot.ipxe": ENTRY_A, "vmlinuz": b"k" * 20000})
        res = publish(pki, r, small.url, "r1")
        assert res.exit_code == 1, res.output
        assert "413" in res.output
        assert not (small.root / "boot.ipxe").exists()
        # no temporary object left (the staging collection itself may stay, empty)
        assert not any(p.is_file() and (p.name.startswith(".tb-tmp") or
                                        p.parent.name == STAGING)
                       for p in small.root.rglob("*"))
    finally:
        stop_nginx(small)


def test_disk_full_on_a_real_tmpfs(pki: Pki, make_release: ReleaseFactory,
                                   tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root; CI runs as root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)]
                      ).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        r = make_release({"boot.ipxe": ENTRY_A, "vmlinuz": os.urandom(256 << 10)})
        res = CliRunner().invoke(cli, ["publish", str(r), f"file://{mnt}", "--release-id",
                                       "r1", "--pki", str(pki.dir)])
        assert res.exit_code == 1, res.output
        assert "No space left" in res.output and "free space" in res.output
        assert not (mnt / "boot.ipxe").exists()
        assert not any(p.name.startswith(".tb-tmp") for p in mnt.rglob("*"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --- tampering, kills, concurrency -----------------------------------------------------

class _Tamper:
    """A progress sink that changes an object on the origin right after its upload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def phase(self, name: str, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def item(self, key: str, action: str) -> None:
        if key == "vmlinuz" and action == "uploaded":
            data = bytearray(self.path.read_bytes())
            data[100] ^= 1
            self.path.write_bytes(bytes(data))


@pytest.mark.parametrize("size,tamper", [
    (10000, "after-upload"),  # a small object: read back after all uploads
    # a large one is read back while the rest uploads: a change after that read-back is
    # caught too (size/ETag re-checked before the switch, or the read-back sees it)
    (6 << 20, "at-readback")])
def test_object_altered_after_upload_is_caught_before_the_switch(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory, size: int, tamper: str) -> None:
    ra = make_release({"boot.ipxe": ENTRY_A})
    assert publish(pki, ra, nginx.url, "ra").exit_code == 0
    rb = make_release({"boot.ipxe": ENTRY_B, "vmlinuz": os.urandom(size)})
    target = nginx.root / "releases/rb/vmlinuz"
    sink = _Tamper(target) if tamper == "after-upload" else _GrowAtReadback(target)
    with open_origin(nginx.url, options_of(pki)) as origin:
        with pytest.raises(VerificationError) as err:
            publish_release(origin, "rb", scan_directory(rb), entry="boot.ipxe",
                            trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                            progress=sink, options=options_of(pki))
    assert "releases/rb/vmlinuz" in err.value.message
    # named as what it is, bytes other than were published, whatever the .sig says: a
    # change (seen by the re-check before the switch) or, when the growth lands during the
    # early read-back (a loaded machine), more bytes than were published
    assert ("changed on" in err.value.message
            or "serves more than the 6291456 bytes published" in err.value.message), \
        err.value.message
    assert "iPXE would refuse" not in err.value.message
    assert err.value.exit_code == 4
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY_A


class _GrowAtReadback(_Tamper):
    """Appends to an object when the read-back phase starts: after a large object's early
    read-back (or during it)."""

    def item(self, key: str, action: str) -> None:
        pass

    def phase(self, name: str, total_bytes: int) -> None:
        if name == "readback":
            with open(self.path, "ab") as fh:
                fh.write(b"x")


def _entry_verifies(pki: Pki, url: str) -> bytes:
    with Reader(ca_file=pki.ca) as reader:
        served, verdict = reader.verify_pair(url + "boot.ipxe", url + "boot.ipxe.sig",
                                             trust=trust_of(pki), now=dt.datetime.now(dt.UTC),
                                             max_size=1 << 20)
    assert verdict.ok, verdict.failure
    return served.digests["sha256"]


def _cli_publish_argv(pki: Pki, directory: Path, url: str, release: str) -> list[str]:
    return [sys.executable, "-m", "trustboot", "publish", str(directory), url, "--release-id",
            release, "--pki", str(pki.dir), "--client-cert", "publisher",
            "--client-key-passphrase-file", str(pki.key_pass), "--json", "--jobs", "2"]


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume(pki: Pki, nginx: Nginx,
                                               make_release: ReleaseFactory) -> None:
    r0 = make_release({"boot.ipxe": ENTRY_A})
    assert publish(pki, r0, nginx.url, "r0").exit_code == 0
    live = hashlib.sha256(ENTRY_A).digest()
    big = make_release({"boot.ipxe": ENTRY_B, "vmlinuz": os.urandom(24 << 20),
                        "initrd.img": os.urandom(24 << 20)})
    argv = _cli_publish_argv(pki, big, nginx.url, "r1")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for delay in (0.6, 1.2, 2.0, 3.0):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the origin keeps serving a complete, verifying release: the old one (or, if the
        # run got that far, the new one)
        assert _entry_verifies(pki, nginx.url) in (live, hashlib.sha256(ENTRY_B).digest())
        leftovers = [p for p in nginx.root.rglob("*") if p.name.startswith(".tb-tmp")
                     and p.is_file()]
        for p in leftovers:
            p.unlink()  # an interrupted PUT's temp object: never served, harmless
    present = {p.relative_to(nginx.root / "releases/r1").as_posix()
               for p in (nginx.root / "releases/r1").rglob("*") if p.is_file()} \
        if (nginx.root / "releases/r1").exists() else set()
    done = subprocess.run(argv, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    # only what was missing was uploaded
    assert not set(out["uploaded"]) & (present - {"release.json"})
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_B).digest()


@pytest.mark.slow
def test_two_publishes_at_once_one_wins(pki: Pki, nginx: Nginx,
                                        make_release: ReleaseFactory) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    ra = make_release({"boot.ipxe": ENTRY_A, "vmlinuz": os.urandom(8 << 20)})
    rb = make_release({"boot.ipxe": ENTRY_B, "vmlinuz": os.urandom(8 << 20)})
    procs = [subprocess.Popen(_cli_publish_argv(pki, d, nginx.url, rid), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for d, rid in ((ra, "ra"), (rb, "rb"))]
    results = [(p.wait(), p.stderr.read().decode()) for p in procs if p.stderr]
    codes = [c for c, _ in results]
    assert 0 in codes, results
    for code, err in results:
        if code != 0:
            assert code == 1 and "locked by" in err, err
    assert _entry_verifies(pki, nginx.url) in (hashlib.sha256(ENTRY_A).digest(),
                                               hashlib.sha256(ENTRY_B).digest())


@pytest.mark.slow
def test_switch_window_ends_as_verification_failure_and_retry_succeeds(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """A client fetching the entry pair while the entry flips between two releases gets
    either a verifying pair or a verification failure; a retry always verifies. The rate
    of failures is printed (the measurement the docs quote)."""
    ra = make_release({"boot.ipxe": ENTRY_A})
    rb = make_release({"boot.ipxe": ENTRY_B})
    assert publish(pki, ra, nginx.url, "ra").exit_code == 0
    assert publish(pki, rb, nginx.url, "rb").exit_code == 0
    trust = trust_of(pki)
    good = {hashlib.sha256(ENTRY_A).digest(), hashlib.sha256(ENTRY_B).digest()}
    stop = threading.Event()
    stats = {"ok": 0, "failed": 0, "retries_to_ok": 0, "max_retries": 0}

    def switcher() -> None:
        with open_origin(nginx.url, options_of(pki)) as origin:
            i = 0
            while not stop.is_set():
                rollback(origin, "ra" if i % 2 else "rb", trust=trust,
                         now=dt.datetime.now(dt.UTC), jobs=1, options=options_of(pki))
                i += 1

    thread = threading.Thread(target=switcher)
    thread.start()
    deadline = time.monotonic() + 8
    try:
        with Reader(ca_file=pki.ca) as reader:
            while time.monotonic() < deadline:
                tries = 0
                while True:
                    script = reader.stream(nginx.url + "boot.ipxe", max_size=1 << 20)
                    sig = reader.fetch(nginx.url + "boot.ipxe.sig", max_size=1 << 20)
                    verdict = judge(sig, script.digests, trust, dt.datetime.now(dt.UTC))
                    if verdict.ok:
                        assert script.digests["sha256"] in good
                        stats["ok"] += 1
                        break
                    assert verdict.failure is not None
                    assert verdict.failure.rule == "signature-mismatch", verdict.failure
                    stats["failed"] += 1
                    tries += 1
                    assert tries < 50, "a retry did not recover"
                stats["retries_to_ok"] += tries
                stats["max_retries"] = max(stats["max_retries"], tries)
    finally:
        stop.set()
        thread.join()
    print(f"\nswitch window: {stats}")
    assert stats["ok"] > 10


def test_hostile_propfind_names_are_never_listed(pki: Pki, proxy: tuple[str, ProxyState]
                                                 ) -> None:
    url, state = proxy
    hrefs = ["/", "/../../etc/passwd", "/releases/r1/%2e%2e/%2e%2e/x", "/a%20b",
             "https://evil.example/x", "/releases/r1/ok.img", "/.tb-tmp.1.x", "/%00",
             "/releases/r1/x%5cy", "/ok2"]
    body = ('<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">' + "".join(
        f"<D:response><D:href>{h}</D:href><D:propstat><D:prop><D:resourcetype/>"
        "<D:getcontentlength>1</D:getcontentlength></D:prop></D:propstat></D:response>"
        for h in hrefs) + "</D:multistatus>").encode()
    state.canned["PROPFIND"] = (207, body)
    with open_origin(url, options_of(pki)) as origin:
        assert origin.list("") == ["ok2", "releases/r1/ok.img"]


def test_rollback_refuses_a_release_whose_kernel_signature_no_longer_verifies(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """Rollback reads every object back and judges each .sig as iPXE would at the time of
    the rollback, not only the entry script: a release whose kernel was signed by a
    certificate that has since expired would switch the fleet to a kernel iPXE refuses.
    The objects are unchanged on the origin (their bytes match the manifest), so only the
    judgement of the read-back signature can stop it."""
    pki.issue("codesign", "short-lived-signer", "--days", "1")
    ra = make_release({"boot.ipxe": ENTRY_A})
    (ra / "vmlinuz").write_bytes(b"kernel A" * 100)
    pki.sign([ra / "vmlinuz"], ra, signer="short-lived-signer")
    rb = make_release({"boot.ipxe": ENTRY_B})
    trust = Trust(tuple(load_trust((), pki.dir)))  # any signer of the CA, as --signer unset
    now = dt.datetime.now(dt.UTC)
    with open_origin(nginx.url, options_of(pki)) as origin:
        for rid, directory in (("ra", ra), ("rb", rb)):
            publish_release(origin, rid, scan_directory(directory), entry="boot.ipxe",
                            trust=trust, now=now, options=options_of(pki))
        assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY_B
        later = now + dt.timedelta(days=3)  # the kernel's signer expired; the entry's not
        with pytest.raises(VerificationError) as err:
            rollback(origin, "ra", trust=trust, now=later, options=options_of(pki))
    assert "releases/ra/vmlinuz" in err.value.message
    assert "iPXE would refuse it" in err.value.message and "expired" in err.value.message
    assert err.value.exit_code == 4
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY_B
