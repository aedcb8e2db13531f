"""`ca check` names what a killed or older run left unfinished, with the command that
finishes it: a previous issuing CA without its CRL, a leftover record of token keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trustboot.ca.store import CertificateAuthority
from trustboot.cli.main import cli

from .conftest import make_ec_ca
from .test_crash import CRASHPOINT


def _ca(pki: Path, secrets: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["ca", *args, "--pki", str(pki), "--passphrase-file",
                                 str(secrets / "ca.pass")])
    return r.exit_code, r.output


def _check(pki: Path) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["ca", "check", "--pki", str(pki)])
    return r.exit_code, " ".join(r.output.split())


@pytest.fixture
def rotated(secrets_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A CA whose issuing CA was rotated once (no leaves): (pki, previous serial)."""
    pki = make_ec_ca(tmp_path / "pki", secrets_dir, [])
    previous = CertificateAuthority.open(pki).active_entry("issuing")
    assert _ca(pki, secrets_dir, "rotate", "issuing")[0] == 0
    assert CertificateAuthority.open(pki).check() == []
    return pki, f"{previous.serial:x}"


def test_a_previous_issuing_ca_without_its_crl_is_reported_and_ca_crl_writes_it(
        rotated: tuple[Path, str], secrets_dir: Path) -> None:
    """It revoked nothing, so no CRL lists anything of it, yet nginx ssl_crl and openssl
    -crl_check_all refuse its leaves without one: reported, `ca crl` makes it."""
    pki, serial = rotated
    (pki / "crls" / f"{serial}.pem").unlink()
    code, out = _check(pki)
    assert code == 3, out
    assert f"crls/{serial}.pem is missing" in out and "run `trustboot ca crl`" in out, out
    assert _ca(pki, secrets_dir, "crl")[0] == 0
    assert (pki / "crls" / f"{serial}.pem").is_file()
    assert CertificateAuthority.open(pki).check() == []


def test_without_its_key_the_fix_says_to_restore_it_or_retire(
        rotated: tuple[Path, str]) -> None:
    pki, serial = rotated
    ca = CertificateAuthority.open(pki)
    previous = ca.find_serial(int(serial, 16))
    assert previous is not None and previous.key_file is not None
    (pki / "crls" / f"{serial}.pem").unlink()
    (pki / previous.key_file).unlink()
    problems = [p for p in CertificateAuthority.open(pki).check() if "crls/" in p]
    assert len(problems) == 1, problems
    assert "restore that CA's key to the CA home and run `trustboot ca crl`" in problems[0]
    assert f"--retire {serial}" in problems[0]


def test_a_retired_or_owing_previous_ca_is_not_reported_twice_or_at_all(
        rotated: tuple[Path, str], secrets_dir: Path) -> None:
    """A retired CA is out of trust (no CRL needed); one that revoked leaves keeps its one
    message ("revoked N certificate(s) that no CRL lists")."""
    pki, serial = rotated
    (pki / "crls" / f"{serial}.pem").unlink()
    r = CliRunner().invoke(cli, ["ca", "rotate", "issuing", "--retire", serial, "--pki",
                                 str(pki)])
    assert r.exit_code == 0, r.output
    assert CertificateAuthority.open(pki).check() == []


def test_a_previous_ca_that_revoked_leaves_is_named_once(secrets_dir: Path,
                                                         tmp_path: Path) -> None:
    pki = make_ec_ca(tmp_path / "pki", secrets_dir, [["codesign", "gone"]])
    previous = CertificateAuthority.open(pki).active_entry("issuing")
    assert _ca(pki, secrets_dir, "revoke", "gone")[0] == 0
    assert _ca(pki, secrets_dir, "rotate", "issuing")[0] == 0
    (pki / "crls" / f"{previous.serial:x}.pem").unlink()
    problems = [p for p in CertificateAuthority.open(pki).check() if "crls/" in p]
    assert len(problems) == 1 and "revoked 1 certificate(s)" in problems[0], problems


def test_code_signing_names_that_differ_only_in_case_are_reported(
        secrets_dir: Path, tmp_path: Path) -> None:
    """`ca issue` refuses a name iPXE's `--signer` would not tell from a valid one, but
    a CA may hold such a pair from before that rule: firmware pinned to `signer` accepts
    `SIGNER`'s signatures. `ca check` reports the pair (exit 3) with the revoke that ends
    it. The old pair is made as an older trustboot made it: the first one out of the way
    (its index status) while the second is issued, then back."""
    pki = make_ec_ca(tmp_path / "pki", secrets_dir, [["codesign", "signer"],
                                                     ["codesign", "other"]])
    index = pki / "index.json"

    def set_status(status: str) -> None:
        doc = json.loads(index.read_text())
        next(e for e in doc["entries"] if e["name"] == "signer")["status"] = status
        index.write_text(json.dumps(doc))

    set_status("retired")
    r = CliRunner().invoke(cli, ["ca", "issue", "codesign", "SIGNER", "--key-type", "ec-p256",
                                 "--pki", str(pki), "--passphrase-file",
                                 str(secrets_dir / "ca.pass"), "--key-passphrase-file",
                                 str(secrets_dir / "key.pass")])
    assert r.exit_code == 0, r.output
    set_status("valid")
    # a renewal keeps the first certificate valid: iPXE accepts both (and refreshes views)
    assert _ca(pki, secrets_dir, "renew", "signer")[0] == 0
    ca = CertificateAuthority.open(pki)
    first, renewed = (e for e in ca.entries if e.name == "signer")
    upper = ca.get("SIGNER")
    code, out = _check(pki)
    assert code == 3, out
    assert out.count("problem:") == 1, out
    assert (f"'signer' (serials {first.serial:x}, {renewed.serial:x}) and 'SIGNER' (serial "
            f"{upper.serial:x}) are the same signer to iPXE") in out, out
    assert f"trustboot ca revoke SIGNER --serial {upper.serial:x}" in out, out
    assert _ca(pki, secrets_dir, "revoke", "SIGNER", "--serial", f"{upper.serial:x}")[0] == 0
    assert _check(pki)[0] == 0


def test_a_record_of_another_run_s_token_keys_is_reported_and_kept(
        secrets_dir: Path, tmp_path: Path) -> None:
    """A record naming pairs that are not this CA's (a CA with key files has none): `ca
    check` names them and how to remove them; a write leaves it (they may be someone's)."""
    pki = make_ec_ca(tmp_path / "pki", secrets_dir, [])
    record = pki / "private" / "pending-token-keys.json"
    ref = "pkcs11:token=ca;object=trustboot-root-ca;id=%01%02%03%04%05%06%07%08"
    record.write_text(json.dumps({"token": "pkcs11:token=ca", "module": "libsofthsm2.so",
                                  "refs": [ref]}))
    record.chmod(0o600)
    code, out = _check(pki)
    assert code == 3, out
    assert "not this CA's keys" in out and ref in out and "--delete-object" in out, out
    assert _ca(pki, secrets_dir, "crl")[0] == 0
    assert record.exists()


@pytest.mark.slow
def test_a_record_left_by_a_token_init_killed_after_its_commit_is_reported_and_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ca init --pkcs11` SIGKILLed after it wrote index.json and before it removed its
    record: the record names the CA's own keys as a killed run's. `ca check` says so and
    names `ca crl`, which removes the record and keeps the keys."""
    from tests.keys.softhsm import PIN, make_token, token_objects

    token = make_token(tmp_path / "hsm")
    for key, value in token.env.items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, **token.env, "TB_PIN": PIN}
    args = ["ca", "init", "--key-type", "ec-p256", "--pkcs11", f"pkcs11:token={token.label}",
            "--pkcs11-module", str(token.module), "--passphrase-env", "TB_PIN"]
    record = None
    for k in range(1, 80):
        pki = tmp_path / f"k{k}"
        killed = subprocess.run([sys.executable, str(CRASHPOINT), *args, "--pki", str(pki)],
                                capture_output=True, text=True, timeout=120,
                                env={**env, "CRASH_AT": str(k)},
                                cwd=Path(__file__).resolve().parents[2])
        assert killed.returncode in (-9, 0), killed.stderr
        if CertificateAuthority.exists(pki):
            record = pki / "private" / "pending-token-keys.json"
            break
        # a kill before the CA exists: the next run's job (tested elsewhere); start over
        again = subprocess.run([sys.executable, "-m", "trustboot", *args, "--pki",
                                str(pki)], capture_output=True, text=True, timeout=120,
                               env=env)
        assert again.returncode == 0, again.stderr
        for label, key_id in token_objects(token):
            for kind in ("privkey", "pubkey"):
                token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin",
                          PIN, "--token-label", token.label, "--delete-object", "--type",
                          kind, "--label", label, "--id", key_id.hex())
    assert record is not None and record.exists(), "no kill between the index and the record"
    keys = token_objects(token)
    assert {label for label, _ in keys} == {"trustboot-root-ca", "trustboot-issuing-ca"}
    code, out = _check(pki)
    assert code == 3, out
    assert "pending-token-keys.json is left by a `ca init --pkcs11` killed after it made " \
        "this CA" in out and "run `trustboot ca crl`" in out, out
    r = CliRunner().invoke(cli, ["ca", "crl", "--pki", str(pki), "--passphrase-env",
                                 "TB_PIN"], env={"TB_PIN": PIN})
    assert r.exit_code == 0, r.output
    assert not record.exists()
    assert token_objects(token) == keys
    assert CertificateAuthority.open(pki).check() == []


def test_the_next_issuing_ca_of_a_root_rotation_is_not_a_previous_one(
        secrets_dir: Path, tmp_path: Path) -> None:
    """`ca rotate root begin` makes the next issuing CA, which is not active yet: `ca
    check` took it for a previous issuing CA without its CRL (exit 3) and told the
    operator to retire it, which would break the rotation under way."""
    pki = make_ec_ca(tmp_path / "pki", secrets_dir, [])
    assert _ca(pki, secrets_dir, "rotate", "root", "begin")[0] == 0
    nxt = CertificateAuthority.open(pki).state.rotation
    assert nxt is not None and nxt.get("new_issuing")
    code, out = _check(pki)
    assert code == 0, out
    assert "--retire" not in out
    ca = CertificateAuthority.open(pki)
    assert ca.check() == [] and ca.previous_issuers_without_crl(with_key=False) == []
    assert ca.previous_crls() == []
