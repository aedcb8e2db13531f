"""`ca init --pkcs11`: the root and issuing keys are generated in a token and sign there."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from tests.keys.softhsm import PIN, Token, openssl_verify, replace_key, token_objects
from trustboot.cli.main import cli

KEY_PASS = "leaf key passphrase"


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-3072"])
def test_ca_keys_in_token(token: Token, tmp_path: Path, key_type: str) -> None:
    import pkcs11

    pki = tmp_path / "pki"
    env = {"TB_PIN": PIN, "TB_KEY": KEY_PASS}
    init = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", key_type,
                                    "--pkcs11", f"pkcs11:token={token.label}",
                                    "--passphrase-env", "TB_PIN", "--json"], env=env)
    assert init.exit_code == 0, init.output
    assert not (pki / "private" / "ca.key").exists()
    assert not (pki / "private" / "issuing-ca.key").exists()
    config = json.loads((pki / "config.json").read_text())
    assert set(config["pkcs11"]) == {"module", "root", "issuing"}
    assert PIN not in (pki / "config.json").read_text()
    root = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    issuing = x509.load_pem_x509_certificate((pki / "issuing-ca.crt").read_bytes())
    root.verify_directly_issued_by(root)
    issuing.verify_directly_issued_by(root)
    # The keys are sensitive and cannot leave the token.
    lib = pkcs11.lib(str(token.module))
    try:
        with lib.get_token(token_label=token.label).open(user_pin=PIN) as session:
            keys = list(session.get_objects({pkcs11.Attribute.CLASS:
                                             pkcs11.ObjectClass.PRIVATE_KEY}))
            labels = {k[pkcs11.Attribute.LABEL] for k in keys}
            assert labels == {"trustboot-root-ca", "trustboot-issuing-ca"}
            for k in keys:
                assert k[pkcs11.Attribute.SENSITIVE] and not k[pkcs11.Attribute.EXTRACTABLE]
    finally:
        lib.finalize()
    # The issuing key in the token signs leaf certificates and CRLs.
    issue = CliRunner().invoke(cli, ["ca", "issue", "codesign", "leaf", "--pki", str(pki),
                                     "--key-type", "ec-p256", "--passphrase-env", "TB_PIN",
                                     "--key-passphrase-env", "TB_KEY"], env=env)
    assert issue.exit_code == 0, issue.output
    leaf = x509.load_pem_x509_certificate((pki / "issued" / "leaf.crt").read_bytes())
    leaf.verify_directly_issued_by(issuing)
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"kernel" * 100)
    signed = CliRunner().invoke(cli, ["sign", str(image), "--pki", str(pki), "--key", "leaf",
                                      "--passphrase-env", "TB_KEY"], env=env)
    assert signed.exit_code == 0, signed.output
    openssl_verify(image, Path(f"{image}.sig"), pki / "ca.crt")
    revoke = CliRunner().invoke(cli, ["ca", "revoke", "leaf", "--pki", str(pki),
                                      "--passphrase-env", "TB_PIN"], env=env)
    assert revoke.exit_code == 0, revoke.output
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    check = CliRunner().invoke(cli, ["ca", "check", "--pki", str(pki)])
    assert check.exit_code == 0, check.output
    # renewal is signed by the issuing key in the token; rotating the token's CA keys is not
    # supported and says so
    # (its only certificate is revoked: the same key is refused, a new one is certified)
    same = CliRunner().invoke(cli, ["ca", "renew", "leaf", "--pki", str(pki),
                                    "--passphrase-env", "TB_PIN"], env=env)
    assert same.exit_code == 3 and "--rekey" in same.output, same.output
    renew = CliRunner().invoke(cli, ["ca", "renew", "leaf", "--rekey", "--pki", str(pki),
                                     "--passphrase-env", "TB_PIN", "--key-passphrase-env",
                                     "TB_KEY"], env=env)
    assert renew.exit_code == 0, renew.output
    renewed = x509.load_pem_x509_certificate((pki / "issued" / "leaf.crt").read_bytes())
    renewed.verify_directly_issued_by(issuing)
    assert renewed.serial_number != leaf.serial_number
    assert renewed.public_key() != leaf.public_key()
    for args in (["rotate", "issuing"], ["rotate", "root", "begin"]):
        r = CliRunner().invoke(cli, ["ca", *args, "--pki", str(pki), "--passphrase-env",
                                     "TB_PIN"], env=env)
        assert r.exit_code == 3 and "PKCS#11 token" in r.output, r.output
    wrong = CliRunner().invoke(cli, ["ca", "crl", "--pki", str(pki), "--passphrase-env",
                                     "TB_BAD"], env={"TB_BAD": "000000"})
    assert wrong.exit_code == 3 and "wrong PIN" in wrong.output, wrong.output


def test_second_ca_in_the_same_token_is_refused(token: Token, tmp_path: Path) -> None:
    env = {"TB_PIN": PIN}
    args = ["ca", "init", "--key-type", "ec-p256", "--pkcs11", f"pkcs11:token={token.label}",
            "--passphrase-env", "TB_PIN"]
    first = CliRunner().invoke(cli, [*args, "--pki", str(tmp_path / "a")], env=env)
    assert first.exit_code == 0, first.output
    # no key file was written, so the advice is not to guard pki/private
    assert "keys stay in the token" in first.output and "private" not in first.output
    before = token_objects(token)
    second = CliRunner().invoke(cli, [*args, "--pki", str(tmp_path / "b")], env=env)
    assert second.exit_code == 3 and "already holds" in second.output, second.output
    assert not (tmp_path / "b" / "index.json").exists()
    assert token_objects(token) == before  # the first CA's keys, untouched
    # the refusal names each object (class, CKA_ID) and the command removing exactly it
    ((label, root_id),) = {o for o in before if o[0] == "trustboot-root-ca"}
    message = " ".join(second.output.split())
    assert f"labelled '{label}': private key id {root_id.hex()}" in message or \
        f"public key id {root_id.hex()}" in message, message
    commands = [c.strip() for c in message.split("remove them: ", 1)[1].split(";")
                if c.strip().startswith("pkcs11-tool")]
    assert {c.split("--type ")[1].split()[0] for c in commands} == {"privkey", "pubkey"}
    for command in commands:  # as the user would, once sure no CA uses them
        assert f"--label {label} --id {root_id.hex()}" in command, command
        token.run(*shlex.split(command.replace("--login", f"--login --pin {PIN}")))
    assert {o[0] for o in token_objects(token)} == {"trustboot-issuing-ca"}


def _replace_issuing_key(token: Token, pki: Path, what: str) -> None:
    ref = json.loads((pki / "config.json").read_text())["pkcs11"]["issuing"]
    replace_key(token, ref, "ec", keep_public=what != "pair")


@pytest.mark.parametrize(("what", "code", "refusal"), [
    ("pair", 3, "is not the key of the issuing CA certificate"),
    ("private", 4, "does not verify with its public key"),
])
def test_a_replaced_token_key_signs_nothing(token: Token, tmp_path: Path, what: str,
                                            code: int, refusal: str) -> None:
    """The token holds whatever is under the CA key's label and id: a key pair put there
    in place of the CA's is refused when it is loaded (its public key is not the CA
    certificate's), a private key alone when its first signature does not verify. Either
    way no certificate or CRL is written."""
    pki = tmp_path / "pki"
    env = {"TB_PIN": PIN, "TB_KEY": KEY_PASS}
    init = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                    "--pkcs11", f"pkcs11:token={token.label}",
                                    "--passphrase-env", "TB_PIN"], env=env)
    assert init.exit_code == 0, init.output
    _replace_issuing_key(token, pki, what)
    index, crl = (pki / "index.json").read_bytes(), (pki / "crl.pem").read_bytes()
    issue = CliRunner().invoke(cli, ["ca", "issue", "codesign", "victim", "--pki", str(pki),
                                     "--key-type", "ec-p256", "--passphrase-env", "TB_PIN",
                                     "--key-passphrase-env", "TB_KEY"], env=env)
    assert issue.exit_code == code, issue.output
    assert refusal in issue.output and "trustboot-issuing-ca" in issue.output, issue.output
    assert "hint:" in issue.output
    crl_run = CliRunner().invoke(cli, ["ca", "crl", "--pki", str(pki), "--passphrase-env",
                                       "TB_PIN"], env=env)
    assert crl_run.exit_code == code and refusal in crl_run.output, crl_run.output
    assert not (pki / "issued" / "victim.crt").exists()
    assert not (pki / "private" / "victim.key").exists()
    assert (pki / "index.json").read_bytes() == index
    assert (pki / "crl.pem").read_bytes() == crl


def test_keys_are_generated_in_a_token_named_with_a_query(token: Token, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The label trustboot names a generated key by is a path attribute: it goes before
    the URI's query (here the module), not after it, where it read as part of
    module-path= and the URI named no key."""
    monkeypatch.delenv("TRUSTBOOT_PKCS11_MODULE")  # the module comes from the URI alone
    pki = tmp_path / "pki"
    init = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                    "--pkcs11",
                                    f"pkcs11:token={token.label}?module-path={token.module}",
                                    "--passphrase-env", "TB_PIN"], env={"TB_PIN": PIN})
    assert init.exit_code == 0, init.output
    refs = json.loads((pki / "config.json").read_text())["pkcs11"]
    assert refs["module"] == str(token.module.resolve())
    for role in ("root", "issuing"):
        assert refs[role].startswith(f"pkcs11:token={token.label};object=trustboot-{role}-ca;id=")
        assert "?" not in refs[role]
    crl = CliRunner().invoke(cli, ["ca", "crl", "--pki", str(pki), "--passphrase-env",
                                   "TB_PIN"], env={"TB_PIN": PIN})
    assert crl.exit_code == 0, crl.output


CRASHPOINT = Path(__file__).resolve().parents[1] / "ca" / "crashpoint.py"


@pytest.mark.slow
def test_init_killed_at_every_commit_point_leaves_no_keys_behind(token: Token,
                                                                 tmp_path: Path) -> None:
    """`ca init --pkcs11` SIGKILLed anywhere before the CA exists leaves key pairs in the
    token (no cleanup runs). Running it again removes exactly those, by the label and
    CKA_ID the killed run recorded before generating each, and makes the CA; a pair of
    anyone else, under any label, stays."""
    import os
    import subprocess
    import sys

    from trustboot.ca.store import CertificateAuthority

    token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", token.label, "--keypairgen", "--key-type", "EC:prime256v1",
              "--label", "production", "--id", "01")
    bystanders = token_objects(token)
    env = {**os.environ, **token.env, "TB_PIN": PIN}
    args = ["ca", "init", "--key-type", "ec-p256", "--pkcs11", f"pkcs11:token={token.label}",
            "--pkcs11-module", str(token.module), "--passphrase-env", "TB_PIN"]

    def run(pki: Path, crash_at: int, count: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
        extra = {"CRASH_COUNT_FILE": str(count)} if count else {}
        return subprocess.run([sys.executable, str(CRASHPOINT), *args, "--pki", str(pki)],
                              capture_output=True, text=True, timeout=120,
                              env={**env, "CRASH_AT": str(crash_at), **extra},
                              cwd=Path(__file__).resolve().parents[2])

    probe = run(tmp_path / "probe", 0, tmp_path / "count")
    assert probe.returncode == 0, probe.stderr
    points = int((tmp_path / "count").read_text())
    for obj in token_objects(token) - bystanders:  # the probe's CA: out of the way
        token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
                  "--token-label", token.label, "--delete-object", "--type", "privkey",
                  "--label", obj[0], "--id", obj[1].hex())
        token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
                  "--token-label", token.label, "--delete-object", "--type", "pubkey",
                  "--label", obj[0], "--id", obj[1].hex())
    assert token_objects(token) == bystanders
    killed_with_keys = 0
    for k in range(1, points + 1):
        pki = tmp_path / f"k{k}"
        killed = run(pki, k)
        assert killed.returncode == -9, (k, killed.stderr)
        if CertificateAuthority.exists(pki):
            break  # from here on the CA exists and owns its keys
        killed_with_keys += bool(token_objects(token) - bystanders)
        again = run(pki, 0)
        assert again.returncode == 0, (k, again.stderr)
        config = json.loads((pki / "config.json").read_text())
        made = token_objects(token) - bystanders
        assert len(made) == 2 and bystanders <= token_objects(token), k
        assert {i.hex() for _, i in made} == {
            ref.rsplit("id=", 1)[1].replace("%", "") for role, ref
            in config["pkcs11"].items() if role != "module"}, k
        assert not (pki / "private" / "pending-token-keys.json").exists()
        assert CertificateAuthority.open(pki).check() == [], k
        for label, key_id in made:  # the next iteration starts from an empty token again
            for kind in ("privkey", "pubkey"):
                token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin",
                          PIN, "--token-label", token.label, "--delete-object", "--type",
                          kind, "--label", label, "--id", key_id.hex())
    assert killed_with_keys, "no kill point fell after the keys were generated"


def test_init_failing_after_generating_removes_only_its_pairs(
        token: Token, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure (or SIGTERM) after the keys are generated and before the CA exists
    removes this run's pairs and its record; another pair in the token stays."""
    from trustboot.ca.store import CertificateAuthority
    from trustboot.errors import OperationalError

    token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", token.label, "--keypairgen", "--key-type", "EC:prime256v1",
              "--label", "production", "--id", "01")
    bystanders = token_objects(token)

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("disk full")
    pki = tmp_path / "pki"
    with monkeypatch.context() as patched:  # (the fixture's own settings stay)
        patched.setattr(CertificateAuthority, "_refresh_views", disk_full)
        init = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type",
                                        "ec-p256", "--pkcs11", f"pkcs11:token={token.label}",
                                        "--passphrase-env", "TB_PIN"], env={"TB_PIN": PIN})
    assert init.exit_code == 1 and "disk full" in init.output, init.output
    assert token_objects(token) == bystanders
    assert not (pki / "private" / "pending-token-keys.json").exists()
    again = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                     "--pkcs11", f"pkcs11:token={token.label}",
                                     "--passphrase-env", "TB_PIN"], env={"TB_PIN": PIN})
    assert again.exit_code == 0, again.output


def test_a_record_of_pairs_in_another_token_is_refused_not_acted_on(
        token: Token, tmp_path: Path) -> None:
    """The killed run generated in another token: nothing of this token is removed (its
    PIN may not even be that token's); the refusal names the recorded pairs."""
    pki = tmp_path / "pki"
    (pki / "private").mkdir(parents=True, mode=0o700)
    pki.chmod(0o755)
    recorded = "pkcs11:token=elsewhere;object=trustboot-root-ca;id=%01%02%03%04%05%06%07%08"
    record = pki / "private" / "pending-token-keys.json"
    record.write_text(json.dumps({"token": "pkcs11:token=elsewhere",
                                  "module": str(token.module.resolve()),
                                  "refs": [recorded]}))
    record.chmod(0o600)
    before = token_objects(token)
    init = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                    "--pkcs11", f"pkcs11:token={token.label}",
                                    "--passphrase-env", "TB_PIN"], env={"TB_PIN": PIN})
    assert init.exit_code == 3 and "in another token" in init.output, init.output
    assert recorded in " ".join(init.output.split()) and record.exists()
    assert token_objects(token) == before and not (pki / "index.json").exists()
