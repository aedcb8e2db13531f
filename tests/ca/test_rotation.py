"""`ca rotate issuing` and the root rotation procedure (begin, promote, retire)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from cryptography import x509

from trustboot.ca.store import CertificateAuthority, IssuedEntry, fingerprint
from trustboot.ipxe.build import BUILD_FORMAT
from trustboot.ipxe.inputs import collect_trust

from .conftest import Run, issue, make_ec_ca


@pytest.fixture(scope="module")
def ec_ca(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Path:
    return make_ec_ca(tmp_path_factory.mktemp("rotation") / "pki", secrets_dir,
                      [["codesign", "signer"], ["codesign", "other"]])


@pytest.fixture
def ca_home(ec_ca: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "pki"
    shutil.copytree(ec_ca, dest)
    return dest


def ca(run: Run, pki: Path, secrets: Path, *args: str, secret: bool = True) -> Result:
    extra = ["--passphrase-file", str(secrets / "ca.pass")] if secret else []
    return run("ca", *args, "--pki", str(pki), *extra)


def js(result: Result) -> Any:
    """The JSON document at the start of the output (an error record may follow)."""
    data, _end = json.JSONDecoder().raw_decode(result.output[result.output.index("{"):])
    return data


def export(run: Run, pki: Path, out: Path) -> dict[str, Any]:
    r = run("ca", "export", "--pki", str(pki), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    return js(r)  # type: ignore[no-any-return]


def sign(run: Run, pki: Path, secrets: Path, out: Path, name: str = "signer") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    image = out.parent / "img.bin"
    image.write_bytes(b"a kernel")
    r = run("sign", str(image), "--key", name, "--pki", str(pki), "--passphrase-file",
            str(secrets / "key.pass"), "--out", str(out))
    assert r.exit_code == 0, r.output
    return out / "img.bin.sig"


def verify(run: Run, sig: Path, *trust: Path) -> Result:
    args = [a for t in trust for a in ("--trust", str(t))]
    return run("verify", str(sig.parent.parent / "img.bin"), "--sig", str(sig), *args)


def openssl_cms(sig: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig), "-content",
         str(sig.parent.parent / "img.bin"), "-CAfile", str(root), "-purpose", "any", "-out",
         "/dev/null"], capture_output=True, text=True)


def openssl_chain(root: Path, issuing: Path, leaf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted",
                           str(issuing), str(leaf)], capture_output=True, text=True)


def build_manifest(path: Path, pki: Path, *, found: bool = True) -> Path:
    """A manifest shaped as `trustboot ipxe build` writes it, for firmware built from the
    pki as it is now (TRUST= every root the CA wants trusted)."""
    trust = collect_trust(pki, [], []).trust
    doc = {"trustboot_ipxe_build": BUILD_FORMAT, "targets": ["bin/ipxe.lkrn"],
           "trust": [c.to_json() for c in trust],
           "outputs": [{"target": "bin/ipxe.lkrn", "sha256": "0" * 64, "size": 1,
                        "trust_check": {"trust": {c.fingerprint: found for c in trust}}}]}
    path.write_text(json.dumps(doc))
    return path


# --- issuing CA ------------------------------------------------------------------------------


def test_rotate_issuing_keeps_old_firmware_working(ca_home: Path, run: Run,
                                                   secrets_dir: Path, tmp_path: Path) -> None:
    before = export(run, ca_home, tmp_path / "before")
    old_root = Path(before["root"])
    old_issuing = CertificateAuthority.open(ca_home).issuing_cert
    old_sig = sign(run, ca_home, secrets_dir, tmp_path / "s-old" / "out")

    r = ca(run, ca_home, secrets_dir, "rotate", "issuing", "--json")
    assert r.exit_code == 0, r.output
    new_entry = js(r)
    authority = CertificateAuthority.open(ca_home)
    assert fingerprint(authority.issuing_cert) == new_entry["sha256"] != fingerprint(old_issuing)
    assert fingerprint(authority.root_cert) == before["root_sha256"]  # same root
    assert "Issuing CA 2" in new_entry["subject"]
    # a new leaf comes from the new issuing CA; firmware built with the old root accepts it
    assert issue(run, ca_home, secrets_dir, "codesign", "fresh", "--key-type",
                 "ec-p256").exit_code == 0
    fresh = CertificateAuthority.open(ca_home).get("fresh")
    assert fresh.issuer_sha256 == new_entry["sha256"]
    sig = sign(run, ca_home, secrets_dir, tmp_path / "s-new" / "out", "fresh")
    r = verify(run, sig, old_root)
    assert r.exit_code == 0, r.output
    assert openssl_cms(sig, old_root).returncode == 0
    # the existing leaf keeps signing with its own chain (the previous issuing CA)
    sig2 = sign(run, ca_home, secrets_dir, tmp_path / "s-old2" / "out")
    assert verify(run, sig2, old_root).exit_code == 0
    certs = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", str(sig2),
                            "-print_certs", "-noout"], capture_output=True, text=True).stdout
    assert "Issuing CA\n" in certs + "\n" and "Issuing CA 2" not in certs
    assert verify(run, old_sig, old_root).exit_code == 0
    # exports and openssl agree on the new chain
    after = export(run, ca_home, tmp_path / "after")
    assert after["root_sha256"] == before["root_sha256"]
    assert after["issuing_sha256"] == new_entry["sha256"]
    ok = openssl_chain(Path(after["root"]), Path(after["issuing"]),
                       ca_home / "issued" / "fresh.crt")
    assert ok.returncode == 0, ok.stderr
    crl = subprocess.run(["openssl", "crl", "-in", str(ca_home / "crl.pem"), "-CAfile",
                          str(Path(after["chain"])), "-noout"], capture_output=True, text=True)
    assert "verify OK" in crl.stdout + crl.stderr
    assert authority.check() == [] and CertificateAuthority.open(ca_home).check() == []


def test_retire_previous_issuing_only_when_unused(ca_home: Path, run: Run, secrets_dir: Path,
                                                  tmp_path: Path) -> None:
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    r = ca(run, ca_home, secrets_dir, "rotate", "issuing", "--retire", f"{old.serial:x}",
           secret=False)
    assert r.exit_code == 3 and "signer" in r.output and "trustboot ca renew other" in r.output
    for name in ("signer", "other"):
        assert ca(run, ca_home, secrets_dir, "renew", name).exit_code == 0
    r = ca(run, ca_home, secrets_dir, "rotate", "issuing", "--retire", f"{old.serial:x}",
           secret=False)
    assert r.exit_code == 0, r.output
    authority = CertificateAuthority.open(ca_home)
    assert authority.find_serial(old.serial).status == "retired"  # type: ignore[union-attr]
    assert old.sha256 not in {fingerprint(c) for c in authority.trusted_issuing()}
    active = authority.active_entry("issuing")
    r = ca(run, ca_home, secrets_dir, "rotate", "issuing", "--retire", f"{active.serial:x}",
           secret=False)
    assert r.exit_code == 3 and "active" in r.output
    assert authority.check() == []


def test_token_held_ca_is_refused_clearly(ca_home: Path, run: Run, secrets_dir: Path) -> None:
    config = json.loads((ca_home / "config.json").read_text())
    config["pkcs11"] = {"module": "/nonexistent.so", "root": "pkcs11:token=t;object=r",
                        "issuing": "pkcs11:token=t;object=i"}
    (ca_home / "config.json").write_text(json.dumps(config))
    for args in (["rotate", "issuing"], ["rotate", "root", "begin"]):
        r = ca(run, ca_home, secrets_dir, *args)
        assert r.exit_code == 3 and "PKCS#11 token" in r.output and "hint:" in r.output


# --- root rotation ---------------------------------------------------------------------------


def test_root_rotation_every_step(ca_home: Path, run: Run, secrets_dir: Path,
                                  tmp_path: Path) -> None:
    r = ca(run, ca_home, secrets_dir, "status", "--json", secret=False)
    assert js(r)["step"] == "stable"
    for step in ("promote", "retire"):
        r = ca(run, ca_home, secrets_dir, "rotate", "root", step,
               secret=step == "promote")
        assert r.exit_code == 3, r.output
        assert "step 'stable'" in r.output and "trustboot ca rotate root begin" in r.output
    old = export(run, ca_home, tmp_path / "old")
    old_root = Path(old["root"])
    old_sig = sign(run, ca_home, secrets_dir, tmp_path / "s0" / "out")

    # begin
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "begin", "--json")
    assert r.exit_code == 0, r.output
    begun = js(r)
    assert begun["status"]["step"] == "begun" and not begun["already_done"]
    new_root_sha = begun["status"]["next_root"]
    assert [e["profile"] for e in begun["created"]] == ["root", "issuing"]
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "begin", "--json")
    assert r.exit_code == 0 and js(r)["already_done"]  # idempotent
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "retire", secret=False)
    assert r.exit_code == 3 and "step 'begun'" in r.output and "promote" in r.output
    r = ca(run, ca_home, secrets_dir, "rotate", "issuing")
    assert r.exit_code == 3 and "root rotation is in progress" in r.output
    status = ca(run, ca_home, secrets_dir, "status", secret=False).output
    assert "root rotation step: begun" in status and "--build-manifest" in status
    # the active chain still signs; exports and builds trust both roots
    authority = CertificateAuthority.open(ca_home)
    assert fingerprint(authority.root_cert) == old["root_sha256"]
    both = export(run, ca_home, tmp_path / "both")
    assert both["trust_sha256"] == [old["root_sha256"], new_root_sha]
    assert Path(both["root_next"]).read_text().count("BEGIN CERTIFICATE") == 1
    assert f"TRUST={both['root']},{both['root_next']}" in both["make_args"]
    # TRUST= holds fingerprints only: the next root's bytes go in CERT= too, as
    # `ipxe build --pki` does, or TLS chains to it cannot be completed at boot
    assert f"CERT={both['root']},{both['root_next']},{both['issuing']}" in both["make_args"]
    assert [c.fingerprint for c in collect_trust(ca_home, [], []).trust] == \
        [old["root_sha256"], new_root_sha]
    sig = sign(run, ca_home, secrets_dir, tmp_path / "s1" / "out")
    assert verify(run, sig, old_root).exit_code == 0
    assert run("verify", str(tmp_path / "s1" / "img.bin"), "--sig", str(sig), "--pki",
               str(ca_home)).exit_code == 0

    # promote: refused without evidence, or with firmware that does not trust the next root
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "promote")
    assert r.exit_code == 3 and "--build-manifest" in r.output and "--confirm-fleet" in r.output
    old_fw = tmp_path / "old-manifest.json"
    doc = json.loads(build_manifest(old_fw, ca_home).read_text())
    doc["trust"] = [t for t in doc["trust"] if t["sha256"] == old["root_sha256"]]
    old_fw.write_text(json.dumps(doc))
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "promote", "--build-manifest",
           str(old_fw))
    assert r.exit_code == 4 and "does not trust the next root" in r.output
    not_found = build_manifest(tmp_path / "nf.json", ca_home, found=False)
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "promote", "--build-manifest",
           str(not_found))
    assert r.exit_code == 4 and "not in the binary" in r.output
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"release": "x"}')
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "promote", "--build-manifest",
           str(garbage))
    assert r.exit_code == 3 and "neither an iPXE build manifest" in r.output
    assert js(ca(run, ca_home, secrets_dir, "status", "--json", secret=False))["step"] == "begun"
    # a release manifest that carries the build manifest is evidence too
    fw = build_manifest(tmp_path / "manifest.json", ca_home)
    release = tmp_path / "release.json"
    release.write_text(json.dumps({"version": 1, "release": "r1",
                                   "files": [{"name": "ipxe.lkrn", "size": 1,
                                              "sha256": "0" * 64, "sig": "ipxe.lkrn.sig"}],
                                   "ipxe": json.loads(fw.read_text())}))
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "promote", "--build-manifest",
           str(release), "--json")
    assert r.exit_code == 0, r.output
    promoted = js(r)
    assert promoted["status"]["step"] == "promoted" and promoted["evidence"]
    assert sorted(e["name"] for e in promoted["renewed"]) == ["other", "signer"]
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "promote", "--json")
    assert r.exit_code == 0 and js(r)["already_done"]
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "begin")
    assert r.exit_code == 3 and "step 'promoted'" in r.output and "retire" in r.output

    # signing switched to the new chain, with the same keys
    authority = CertificateAuthority.open(ca_home)
    assert fingerprint(authority.root_cert) == new_root_sha
    new_sig = sign(run, ca_home, secrets_dir, tmp_path / "s2" / "out")
    promoted_export = export(run, ca_home, tmp_path / "promoted")
    new_root = Path(promoted_export["root"])
    assert promoted_export["trust_sha256"] == [new_root_sha, old["root_sha256"]]
    assert Path(promoted_export["root_previous"]).read_bytes() == old_root.read_bytes()
    assert verify(run, new_sig, new_root).exit_code == 0
    assert openssl_cms(new_sig, new_root).returncode == 0
    assert openssl_chain(new_root, Path(promoted_export["issuing"]),
                         ca_home / "issued" / "signer.crt").returncode == 0
    r = verify(run, new_sig, old_root)  # firmware that only trusts the old root refuses
    assert r.exit_code == 4 and "untrusted-root" in r.output
    assert openssl_cms(new_sig, old_root).returncode != 0
    assert verify(run, old_sig, old_root).exit_code == 0  # old signatures still boot old fw
    assert authority.check() == []

    # retire
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "retire", "--json", secret=False)
    assert r.exit_code == 0, r.output
    retired = js(r)
    assert retired["status"]["step"] == "stable"
    assert {e["profile"] for e in retired["retired"]} == {"root", "issuing"}
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "retire", "--json", secret=False)
    assert r.exit_code == 0 and js(r)["already_done"]
    final = export(run, ca_home, tmp_path / "promoted")  # same directory as before
    assert final["trust_sha256"] == [new_root_sha]
    assert not (tmp_path / "promoted" / "root-previous.pem").exists()
    assert "root-previous" not in final["make_args"]
    assert [c.fingerprint for c in collect_trust(ca_home, [], []).trust] == [new_root_sha]
    r = run("verify", str(tmp_path / "s0" / "img.bin"), "--sig", str(old_sig), "--pki",
            str(ca_home))
    assert r.exit_code == 4  # the old chain is out of the pki's trust
    authority = CertificateAuthority.open(ca_home)
    old_leaves = [e for e in authority.entries if e.name == "signer"][:1]
    assert authority.status_of(old_leaves[0]) == "retired"
    old_root_entry = authority.by_sha256(old["root_sha256"])
    assert old_root_entry is not None and old_root_entry.status == "retired"
    assert old_root_entry.key_path.exists()  # archived, not deleted
    assert authority.check() == [] and authority.check_log().problem is None
    ops = [json.loads(x)["op"] for x in (ca_home / "log.jsonl").read_text().splitlines()]
    assert ops[-3:] == ["rotate-root-begin", "rotate-root-promote", "rotate-root-retire"]
    # a second rotation can follow
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "begin", "--json")
    assert r.exit_code == 0 and "Root CA 3" in js(r)["created"][0]["subject"]


def test_begin_with_the_wrong_passphrase_changes_nothing(ca_home: Path, run: Run,
                                                        secrets_dir: Path) -> None:
    before = (ca_home / "index.json").read_bytes()
    r = run("ca", "rotate", "root", "begin", "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "wrong.pass"))
    assert r.exit_code == 3 and "wrong passphrase" in r.output
    assert (ca_home / "index.json").read_bytes() == before



def test_promote_keeps_each_leaf_end_of_life_to_the_second(tmp_path: Path) -> None:
    """The leaves certified again under the next root end when they ended, not up to a
    day later (the renewal counted whole days from now)."""
    import datetime as dt

    from trustboot.ca import rotation
    from trustboot.secrets import constant

    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    pw = constant(b"correct horse battery")
    ca, _ = CertificateAuthority.init(tmp_path / "pki", pw, key_type="ec-p256", now=now)
    ca.issue("codesign", "short", pw, pw, key_type="ec-p256", days=2, now=now)
    before = ca.get("short", now).not_after_dt()
    later = now + dt.timedelta(hours=7, minutes=13)
    rotation.begin_root(ca, pw, key_type="ec-p256", now=later)
    result = rotation.promote_root(ca, pw, confirm_fleet=True, now=later)
    [renewed] = [e for e in result.renewed if e.name == "short"]
    assert renewed.not_after_dt() == before
    assert ca.get("short", later).serial == renewed.serial


def test_revoking_a_leaf_of_a_previous_issuing_ca_puts_it_on_that_ca_s_crl(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """After `ca rotate issuing`, crl.pem is the new issuing CA's and cannot list a leaf
    the previous one issued. Revoking that leaf writes crls/SERIAL.pem, signed by the
    previous issuing CA (its key is still in the CA home): openssl verifies it against
    that CA, it lists the leaf, and `verify --crl` reports a signature by the leaf as
    revoked. `ca crl` refreshes it; `ca check` stays clean."""
    before = export(run, ca_home, tmp_path / "before")
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    old_sig = sign(run, ca_home, secrets_dir, tmp_path / "s" / "out")  # by "signer"
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    r = ca(run, ca_home, secrets_dir, "revoke", "signer", "--reason", "key_compromise",
           "--json")
    assert r.exit_code == 0, r.output
    assert "previous issuing CA" not in r.output  # no warning: it is on a CRL
    crl_path = ca_home / "crls" / f"{old.serial:x}.pem"
    assert js(r)["crl"] == str(crl_path)
    authority = CertificateAuthority.open(ca_home)
    leaf = authority.find_serial(int(js(r)["serial"], 16))
    assert leaf is not None and leaf.issuer_sha256 == old.sha256
    text = subprocess.run(["openssl", "crl", "-in", str(crl_path), "-CAfile",
                           str(Path(before["chain"])), "-noout", "-text"],
                          capture_output=True, text=True)
    assert "verify OK" in text.stdout + text.stderr, text.stdout + text.stderr
    assert f"{leaf.serial:X}" in text.stdout.replace(":", "").upper()
    assert "Key Compromise" in text.stdout
    # the active issuing CA's CRL still lists none of the previous one's leaves
    assert leaf.serial not in {c.serial_number for c in x509.load_pem_x509_crl(
        (ca_home / "crl.pem").read_bytes())}
    # what a pipeline without the CA home learns from the published CRL
    r = run("verify", str(old_sig.parent.parent / "img.bin"), "--sig", str(old_sig),
            "--trust", before["root"], "--crl", str(crl_path), "--json")
    assert json.loads(r.output)["revoked"], r.output
    # `ca crl` refreshes it (a new number), `ca check` finds everything consistent
    _ca_crl_renews(run, ca_home, secrets_dir, crl_path)
    assert CertificateAuthority.open(ca_home).check() == []


def test_revoking_a_leaf_of_a_previous_issuing_ca_without_its_key_says_why(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    """The previous issuing CA's key is gone from the CA home: the leaf is revoked in the
    index, no CRL can list it, and the warning says so and what to do."""
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    old.key_path.unlink()
    r = ca(run, ca_home, secrets_dir, "revoke", "signer")
    assert r.exit_code == 0, r.output
    assert f"previous issuing CA {old.serial:x}, whose key is not in the CA home" in r.output
    assert f"--retire {old.serial:x}" in r.output and "on no CRL" in r.output
    # the empty CRL the rotation wrote cannot be signed again: export says what to do
    crl_path = ca_home / "crls" / f"{old.serial:x}.pem"
    assert CertificateAuthority.open(ca_home).get("signer").serial not in _listed(crl_path)
    r = run("ca", "export", "--pki", str(ca_home), "--out", str(ca_home.parent / "ex"))
    assert r.exit_code == 3 and "does not list revoked signer" in r.output, r.output
    assert f"--retire {old.serial:x}" in r.output and "restore" in r.output, r.output
    assert CertificateAuthority.open(ca_home).get("signer").status == "revoked"


def _old_leaf_revoked(ca_home: Path, run: Run, secrets_dir: Path) -> tuple[IssuedEntry, Path]:
    """Rotate the issuing CA and revoke a leaf of the previous one: crls/SERIAL.pem."""
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    assert ca(run, ca_home, secrets_dir, "revoke", "signer").exit_code == 0
    crl_path = ca_home / "crls" / f"{old.serial:x}.pem"
    assert crl_path.is_file()
    return old, crl_path


def test_export_carries_the_previous_issuing_cas_crls(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """A pipeline that checks signatures by a previous issuing CA's leaves needs that CA's
    CRL: `ca export` copies crls/ beside crl.pem, public, and drops one that is gone."""
    old, crl_path = _old_leaf_revoked(ca_home, run, secrets_dir)
    out = tmp_path / "export"
    data = export(run, ca_home, out)
    copied = out / "crls" / crl_path.name
    assert data["crls"] == [str(copied)]
    assert copied.read_bytes() == crl_path.read_bytes()
    assert copied.stat().st_mode & 0o777 == 0o644
    assert (out / "crls").stat().st_mode & 0o777 == 0o755
    leaf = CertificateAuthority.open(ca_home).find_serial(old.serial)
    assert leaf is not None
    listed = {c.serial_number for c in x509.load_pem_x509_crl(copied.read_bytes())}
    assert any(e.serial in listed for e in CertificateAuthority.open(ca_home).entries
               if e.status == "revoked")
    # a CRL that is no longer in the CA home does not stay in the export
    (out / "crls" / "abc.pem").write_bytes(copied.read_bytes())
    export(run, ca_home, out)
    assert sorted(p.name for p in (out / "crls").iterdir()) == [crl_path.name]


def test_export_refuses_a_previous_crl_its_issuer_did_not_sign(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    _old, crl_path = _old_leaf_revoked(ca_home, run, secrets_dir)
    crl_path.write_bytes((ca_home / "crl.pem").read_bytes())  # the new issuing CA's
    r = run("ca", "export", "--pki", str(ca_home), "--out", str(tmp_path / "export"))
    assert r.exit_code == 3, r.output
    assert f"{crl_path} is not signed by this CA's previous issuing CA" in r.output
    assert not (tmp_path / "export" / "crls").exists()


def test_check_checks_each_previous_issuing_cas_crl(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    """`ca check` holds crls/SERIAL.pem to crl.pem's rules: signed by that previous issuing
    CA, not past nextUpdate, listing its every revocation; a stray file is named."""
    old, crl_path = _old_leaf_revoked(ca_home, run, secrets_dir)
    authority = CertificateAuthority.open(ca_home)
    assert authority.check() == []
    rel = f"crls/{crl_path.name}"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert any(p.startswith(f"{rel} is out of date") for p in authority.check(later))
    fix = (f"; run `trustboot ca crl` (it needs that CA's key in the CA home), or retire "
           f"the CA: `trustboot ca rotate issuing --retire {old.serial:x}`")
    good = crl_path.read_bytes()
    crl_path.write_bytes((ca_home / "crl.pem").read_bytes())
    assert f"{rel} is not signed by this CA's previous issuing CA {old.serial:x}{fix}" in \
        CertificateAuthority.open(ca_home).check()
    crl_path.write_bytes(b"not a CRL")
    assert f"{rel} is not a PEM CRL{fix}" in CertificateAuthority.open(ca_home).check()
    crl_path.write_bytes(good)
    (ca_home / "crls" / "ffff.pem").write_bytes(good)
    problems = CertificateAuthority.open(ca_home).check()
    assert problems == [f"crls/ffff.pem is not the CRL of a previous issuing CA of this CA; "
                        f"move it out of {ca_home / 'crls'}"]
    r = run("ca", "check", "--pki", str(ca_home))
    assert r.exit_code == 3 and "crls/ffff.pem" in r.output, r.output


def test_a_retired_issuing_cas_crl_is_neither_exported_nor_held_to_its_date(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """Retiring a previous issuing CA takes its chain out of trust and exports: its CRL
    leaves the export, and `ca check` no longer wants it fresh (its key may be gone, so
    nothing could refresh it); a signature on it still has to be its own."""
    old, crl_path = _old_leaf_revoked(ca_home, run, secrets_dir)
    out = tmp_path / "export"
    assert export(run, ca_home, out)["crls"] == [str(out / "crls" / crl_path.name)]
    assert ca(run, ca_home, secrets_dir, "renew", "other").exit_code == 0
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing", "--retire", f"{old.serial:x}",
              secret=False).exit_code == 0
    assert export(run, ca_home, out)["crls"] == []
    assert list((out / "crls").iterdir()) == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert not any(p.startswith("crls/") for p in
                   CertificateAuthority.open(ca_home).check(later))
    crl_path.write_bytes((ca_home / "crl.pem").read_bytes())
    assert any(p.startswith(f"crls/{crl_path.name} is not signed by") for p in
               CertificateAuthority.open(ca_home).check())


def test_rotation_refusals_that_change_nothing(ca_home: Path, secrets_dir: Path) -> None:
    """Each refused before anything is written: retiring the active issuing CA, a next
    issuing CA that would live as long as its root, and evidence about another root."""
    from trustboot.ca.evidence import operator_evidence
    from trustboot.ca.rotation import begin_root, promote_root, retire_issuing
    from trustboot.errors import ConfigError
    from trustboot.secrets import constant

    from .conftest import CA_PASS

    index = ca_home / "index.json"
    before = index.read_bytes()
    ca = CertificateAuthority.open(ca_home)
    active = ca.active_entry("issuing")
    with pytest.raises(ConfigError, match=f"issuing CA {active.serial:x} is the active one"):
        retire_issuing(ca, active.serial)
    leaf = ca.current("signer")
    assert leaf is not None
    with pytest.raises(ConfigError, match=f"no issuing CA with serial {leaf.serial:x}"):
        retire_issuing(ca, leaf.serial)
    with pytest.raises(ConfigError, match=r"the issuing CA \(400 days\) must expire before"):
        begin_root(ca, constant(CA_PASS.encode()), root_days=400, issuing_days=400)
    assert index.read_bytes() == before
    begin_root(ca, constant(CA_PASS.encode()))
    ca = CertificateAuthority.open(ca_home)
    begun = index.read_bytes()
    with pytest.raises(ConfigError, match="is about root " + "0" * 64):
        promote_root(ca, constant(CA_PASS.encode()), evidence=[operator_evidence("0" * 64)])
    assert index.read_bytes() == begun


def test_check_does_not_ask_for_keys_of_leaves_under_a_retired_issuing_ca(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    """Leaves of a retired issuing CA no longer sign: their keys may be destroyed (as they
    should be, once renewed with new keys) without `ca check` calling that a problem."""
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    old_signer = CertificateAuthority.open(ca_home).get("signer")
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    for name in ("signer", "other"):
        r = ca(run, ca_home, secrets_dir, "renew", name, "--rekey", "--key-passphrase-file",
               str(secrets_dir / "key.pass"))
        assert r.exit_code == 0, r.output
    r = ca(run, ca_home, secrets_dir, "rotate", "issuing", "--retire", f"{old.serial:x}",
           secret=False)
    assert r.exit_code == 0, r.output
    authority = CertificateAuthority.open(ca_home)
    assert authority.get("signer").key_file != old_signer.key_file
    (ca_home / str(old_signer.key_file)).unlink()
    assert authority.check() == []


RACED = ["issue", "renew", "revoke", "crl", "root-crl", "rotate-issuing"]


@pytest.mark.parametrize("op", RACED)
def test_a_rotation_while_a_command_unlocks_the_previous_key_is_refused(
        op: str, ca_home: Path) -> None:
    """A CA command unlocks its key before it takes the CA lock (a prompt never holds
    it): a rotation that lands in between must not have the old key sign what names its
    successor as issuer. The passphrase source itself runs the rotation, at the very
    moment the command unlocks."""
    from trustboot.ca import rotation
    from trustboot.errors import OperationalError
    from trustboot.secrets import constant

    from .conftest import CA_PASS, KEY_PASS

    secret = constant(CA_PASS.encode())
    raced: list[str] = []

    def unlock_while_rotated(what: str) -> bytes:
        if not raced:
            raced.append(what)
            other = CertificateAuthority.open(ca_home)  # another process, as it were
            if op in ("rotate-issuing", "root-crl"):  # the root changes: a whole rotation
                rotation.begin_root(other, secret)
                rotation.promote_root(CertificateAuthority.open(ca_home), secret,
                                      confirm_fleet=True)
                rotation.retire_root(CertificateAuthority.open(ca_home))
            else:
                rotation.rotate_issuing(other, secret)
        return CA_PASS.encode()

    ca = CertificateAuthority.open(ca_home)
    before = ca.check()
    calls: dict[str, Callable[[], object]] = {
        "issue": lambda: ca.issue("codesign", "late", unlock_while_rotated,
                                  constant(KEY_PASS.encode()), key_type="ec-p256"),
        "renew": lambda: ca.renew("signer", unlock_while_rotated),
        "revoke": lambda: ca.revoke("other", unlock_while_rotated),
        "crl": lambda: ca.generate_crl(unlock_while_rotated),
        "root-crl": lambda: ca.generate_root_crl(unlock_while_rotated),
        "rotate-issuing": lambda: rotation.rotate_issuing(ca, unlock_while_rotated),
    }
    with pytest.raises(OperationalError, match="rotated while this command ran"):
        calls[op]()
    assert raced, "the race did not happen"
    after = CertificateAuthority.open(ca_home)
    assert after.check() == before == [], after.check()  # nothing signed by the old key
    assert not any(e.name == "late" for e in after.entries)
    assert all(e.status != "revoked" for e in after.entries if e.name == "other")
    if op != "rotate-issuing":  # (the rotation itself wrote a CRL)
        crl = x509.load_pem_x509_crl((ca_home / "crl.pem").read_bytes())
        assert crl.is_signature_valid(after.issuing_cert.public_key())  # type: ignore[arg-type]


def _crl_number(crl_path: Path) -> int:
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def _ca_crl_renews(run: Run, ca_home: Path, secrets_dir: Path, crl_path: Path) -> None:
    """`ca crl` writes ``crl_path`` again, with a higher CRL number."""
    number = _crl_number(crl_path)
    assert ca(run, ca_home, secrets_dir, "crl").exit_code == 0
    assert _crl_number(crl_path) > number


def _listed(crl_path: Path) -> set[int]:
    return {c.serial_number for c in x509.load_pem_x509_crl(crl_path.read_bytes())}


def test_rotate_issuing_keeps_the_previous_cas_revocations_on_a_crl(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """A leaf revoked before `ca rotate issuing` stays on a CRL: crl.pem becomes the new
    issuing CA's, so the previous one's CRL moves to crls/SERIAL.pem (signed by it), `ca
    crl` keeps refreshing it, `ca export` hands it on, and `verify --crl` with it still
    reports an old signature by the revoked leaf."""
    before = export(run, ca_home, tmp_path / "before")
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    old_sig = sign(run, ca_home, secrets_dir, tmp_path / "s" / "out")  # by "signer"
    revoked = CertificateAuthority.open(ca_home).get("signer").serial
    assert ca(run, ca_home, secrets_dir, "revoke", "signer", "--reason",
              "key_compromise").exit_code == 0
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    crl_path = ca_home / "crls" / f"{old.serial:x}.pem"
    assert crl_path.is_file(), "the previous issuing CA's revocations are on no CRL"
    assert revoked in _listed(crl_path)
    assert x509.load_pem_x509_crl(crl_path.read_bytes()).is_signature_valid(
        old.load_cert().public_key())  # type: ignore[arg-type]
    assert CertificateAuthority.open(ca_home).check() == []
    data = export(run, ca_home, tmp_path / "after")
    assert data["crls"] == [str(tmp_path / "after" / "crls" / crl_path.name)]
    r = run("verify", str(old_sig.parent.parent / "img.bin"), "--sig", str(old_sig),
            "--trust", before["root"], "--crl", data["crls"][0], "--json")
    assert json.loads(r.output)["revoked"], r.output
    _ca_crl_renews(run, ca_home, secrets_dir, crl_path)
    assert revoked in _listed(crl_path)


def test_rotate_issuing_gives_the_previous_ca_a_crl_even_with_no_revocation(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """A relying party that checks the CRL of every CA of a chain (nginx ssl_crl, openssl
    -crl_check_all) needs one from the previous issuing CA for the leaves it issued, even
    when it revoked nothing: the rotation writes an empty one, signed by it, `ca crl`
    refreshes it and writes it back for a CA home rotated without it, `ca export` hands it
    on, and openssl accepts a leaf of that CA against it."""
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    signer = CertificateAuthority.open(ca_home).get("signer")
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    crl_path = ca_home / "crls" / f"{old.serial:x}.pem"
    assert crl_path.is_file(), "the previous issuing CA has no CRL"
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert len(crl) == 0 and crl.issuer == old.load_cert().subject
    assert crl.is_signature_valid(old.load_cert().public_key())  # type: ignore[arg-type]
    assert CertificateAuthority.open(ca_home).check() == []
    assert ca(run, ca_home, secrets_dir, "crl", "--root").exit_code == 0
    data = export(run, ca_home, tmp_path / "export")
    assert data["crls"] == [str(tmp_path / "export" / "crls" / crl_path.name)]
    chain = tmp_path / "old-chain.pem"
    chain.write_bytes(old.read_cert_pem() + Path(data["root"]).read_bytes())
    checked = subprocess.run(
        ["openssl", "verify", "-crl_check_all", "-CAfile", str(chain), "-CRLfile",
         data["crls"][0], "-CRLfile", str(ca_home / "root-crl.pem"), str(signer.cert_path)],
        capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    crl_path.unlink()  # as a rotation by an older version left it
    assert ca(run, ca_home, secrets_dir, "crl").exit_code == 0
    assert crl_path.is_file() and CertificateAuthority.open(ca_home).check() == []


def test_promote_keeps_the_previous_issuing_cas_revocations_on_a_crl(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    """The promote step makes the next issuing CA active: the previous one (not retired
    until the retire step) keeps its revocations on crls/SERIAL.pem."""
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    revoked = CertificateAuthority.open(ca_home).get("signer").serial
    assert ca(run, ca_home, secrets_dir, "revoke", "signer").exit_code == 0
    assert ca(run, ca_home, secrets_dir, "rotate", "root", "begin").exit_code == 0
    r = ca(run, ca_home, secrets_dir, "rotate", "root", "promote", "--confirm-fleet")
    assert r.exit_code == 0, r.output
    crl_path = ca_home / "crls" / f"{old.serial:x}.pem"
    assert crl_path.is_file() and revoked in _listed(crl_path)
    assert CertificateAuthority.open(ca_home).check() == []


def test_a_previous_issuing_ca_with_revocations_and_no_crl_is_flagged_and_refused(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """A CA home rotated by a version that dropped the previous issuing CA's CRL: `ca
    check` names the missing CRL, `ca export` refuses (its crls/ would hide the
    revocation), and `ca crl` writes it back."""
    old = CertificateAuthority.open(ca_home).active_entry("issuing")
    assert ca(run, ca_home, secrets_dir, "revoke", "signer").exit_code == 0
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    crl_path = ca_home / "crls" / f"{old.serial:x}.pem"
    crl_path.unlink()
    rel = f"crls/{crl_path.name}"
    problems = CertificateAuthority.open(ca_home).check()
    assert any(p.startswith(f"{rel} is missing") for p in problems), problems
    r = ca(run, ca_home, secrets_dir, "check", secret=False)
    assert r.exit_code == 3 and rel in r.output, r.output
    r = run("ca", "export", "--pki", str(ca_home), "--out", str(tmp_path / "export"))
    assert r.exit_code == 3 and str(crl_path) in r.output and "ca crl" in r.output, r.output
    assert not (tmp_path / "export").exists()
    assert ca(run, ca_home, secrets_dir, "crl").exit_code == 0
    assert crl_path.is_file() and CertificateAuthority.open(ca_home).check() == []


@pytest.mark.parametrize("damage", ["previous-crl-gone", "crl-pem-replaced"])
def test_rotate_issuing_after_a_completed_rotation_rotates_again(
        damage: str, ca_home: Path, run: Run, secrets_dir: Path) -> None:
    """Only a run killed after its commit is finished by running it again: after a
    rotation that completed, a previous CA's CRL gone from crls/ (a backup without it, an
    older version) or a crl.pem that is not the active CA's is no sign of a kill. The
    next `ca rotate issuing` (say, on a suspected key compromise) makes a new issuing CA;
    it had answered "finished" with exit 0 and the same CA. `ca check` still names the
    damage it found, with its fix."""
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    first = CertificateAuthority.open(ca_home)
    rotated = first.active_entry("issuing")
    if damage == "previous-crl-gone":
        for path in (ca_home / "crls").glob("*.pem"):
            path.unlink()
    else:
        (ca_home / "crl.pem").write_bytes(b"not a CRL\n")
    problems = CertificateAuthority.open(ca_home).check()
    assert problems and all("trustboot ca crl" in p for p in problems), problems
    r = ca(run, ca_home, secrets_dir, "rotate", "issuing", "--json")
    assert r.exit_code == 0, r.output
    assert js(r)["action"] == "created", r.output
    after = CertificateAuthority.open(ca_home)
    assert after.active_entry("issuing").sha256 != rotated.sha256
    assert int(js(r)["serial"], 16) == after.active_entry("issuing").serial
    assert sum(e.profile == "issuing" for e in after.entries) == 3
    if damage == "previous-crl-gone":
        # the first CA's CRL is still missing: said so, and `ca crl` writes it back
        original = next(e for e in after.entries if e.profile == "issuing"
                        and e.sha256 not in (rotated.sha256,
                                             after.active_entry("issuing").sha256))
        rel = f"crls/{original.serial:x}.pem"
        r = ca(run, ca_home, secrets_dir, "check", secret=False)
        assert r.exit_code != 0 and rel in r.output, r.output
        assert ca(run, ca_home, secrets_dir, "crl").exit_code == 0
    assert CertificateAuthority.open(ca_home).check() == []


def test_a_stale_unfinished_mark_with_nothing_owed_rotates_again(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    """A rotation whose work all got done but whose last write, clearing the unfinished
    mark, failed (a full disk, a read-only remount) leaves the mark in index.json. The next
    `ca rotate issuing` (say, on a suspected key compromise) finds nothing owed: it makes
    a new issuing CA; it had answered "finished" with exit 0 and the same CA."""
    assert ca(run, ca_home, secrets_dir, "rotate", "issuing").exit_code == 0
    rotated = CertificateAuthority.open(ca_home).active_entry("issuing")
    index = ca_home / "index.json"
    doc = json.loads(index.read_text())
    assert "unfinished" not in doc
    doc["unfinished"] = {"op": "rotate-issuing", "issuing": rotated.sha256}
    index.write_text(json.dumps(doc, indent=2))
    assert CertificateAuthority.open(ca_home).check() == []
    r = ca(run, ca_home, secrets_dir, "rotate", "issuing", "--json")
    assert r.exit_code == 0, r.output
    assert js(r)["action"] == "created", r.output
    after = CertificateAuthority.open(ca_home)
    assert after.active_entry("issuing").sha256 != rotated.sha256
    assert sum(e.profile == "issuing" for e in after.entries) == 3
    assert "unfinished" not in json.loads(index.read_text())
    assert after.check() == []
