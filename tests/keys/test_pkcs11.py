"""`trustboot sign --key pkcs11:...` against a real SoftHSM2 token (a fresh one per test)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asn1crypto import cms
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import dsa, ec

from tests.cms.pki import Material, ec_key, rsa_key
from tests.keys.softhsm import PIN, Token, openssl_verify
from trustboot.cli.main import cli
from trustboot.cms.workflow import sign_paths
from trustboot.errors import ConfigError
from trustboot.keys.pkcs11 import parse_uri
from trustboot.keys.ref import mask_pin

ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")


def _image(tmp_path: Path, name: str = "vmlinuz", data: bytes = b"kernel " * 999) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pin_file(tmp_path: Path, pin: str = PIN) -> Path:
    path = tmp_path / "pin"
    path.write_text(pin + "\n")
    path.chmod(0o600)
    return path


def _sign(token: Token, tmp_path: Path, files: list[Path], uri: str, *extra: str,
          pin: str = PIN) -> Result:
    return CliRunner().invoke(cli, ["sign", *map(str, files), "--key", uri,
                                    "--pin-file", str(_pin_file(tmp_path, pin)), *extra])


@pytest.mark.parametrize("kind", ["rsa", "ec-p256", "ec-p384"])
def test_token_signature_verifies_like_a_file_key(token: Token, material: Material,
                                                  tmp_path: Path, kind: str) -> None:
    key = rsa_key() if kind == "rsa" else ec_key(
        ec.SECP256R1() if kind == "ec-p256" else ec.SECP384R1())
    key_path, cert, chain = material.issue(f"hsm-{kind}", key)
    token.import_key(key, "signer")
    image = _image(tmp_path)
    result = _sign(token, tmp_path, [image], token.uri(), "--cert", str(cert),
                   "--chain", str(chain), "--hash", "sha384", "--pki", str(tmp_path / "nopki"))
    assert result.exit_code == 0, result.output
    sig = image.with_name("vmlinuz.sig")
    root = material.directory / "root.pem"
    openssl_verify(image, sig, root)
    verify = CliRunner().invoke(cli, ["verify", str(image), "--trust", str(root)])
    assert verify.exit_code == 0, verify.output
    # Same structure as the file-key path: only the signature value may differ.
    file_sig = tmp_path / "file.sig"
    env = {"TB_P": "correct horse battery"}
    same = CliRunner().invoke(cli, ["sign", str(image), "--key", f"file:{key_path}", "--cert",
                                    str(cert), "--chain", str(chain), "--hash", "sha384",
                                    "--passphrase-env", "TB_P", "--out", str(tmp_path / "f")],
                              env=env)
    assert same.exit_code == 0, same.output
    file_sig = tmp_path / "f" / "vmlinuz.sig"
    a = cms.ContentInfo.load(sig.read_bytes())["content"]
    b = cms.ContentInfo.load(file_sig.read_bytes())["content"]
    for name in ("version", "digest_algorithms", "encap_content_info", "certificates"):
        assert a[name].dump() == b[name].dump(), name
    sa, sb = a["signer_infos"][0], b["signer_infos"][0]
    for name in ("version", "sid", "digest_algorithm", "signature_algorithm", "signed_attrs"):
        assert sa[name].dump() == sb[name].dump(), name
    if kind == "rsa":  # PKCS#1 v1.5 is deterministic: the token computed the same value
        assert sa["signature"].native == sb["signature"].native


def test_certificate_from_the_token_and_many_files_one_login(
        token: Token, material: Material, tmp_path: Path) -> None:
    key = ec_key()
    _, cert_path, chain = material.issue("hsm-cert-in-token", key)
    from cryptography import x509

    token.import_key(key, "signer", "0a")
    token.import_cert(x509.load_pem_x509_certificate(cert_path.read_bytes()), "signer", "0a")
    files = [_image(tmp_path, f"f{i}", f"file {i}".encode()) for i in range(40)]
    asked: list[str] = []

    def pins(what: str) -> bytes:
        asked.append(what)
        return PIN.encode()

    run = sign_paths(files, token.uri(id="%0a"), secrets=pins, chain=chain,
                     pkcs11_module=token.module)
    assert len(run.results) == 40 and len(asked) == 1, asked
    assert "trustboot-test" in asked[0]
    for f in files[:3] + files[-2:]:
        openssl_verify(f, f.with_name(f.name + ".sig"), material.directory / "root.pem")


@pytest.mark.skipif(not ENGINE.is_file(), reason="libengine-pkcs11-openssl is not installed")
def test_cross_check_with_openssl_pkcs11_engine(token: Token, material: Material,
                                                tmp_path: Path) -> None:
    key = rsa_key()
    _, cert, chain = material.issue("hsm-engine", key)
    token.import_key(key, "signer")
    image = _image(tmp_path)
    result = _sign(token, tmp_path, [image], token.uri(), "--cert", str(cert), "--chain",
                   str(chain))
    assert result.exit_code == 0, result.output
    conf = tmp_path / "openssl.cnf"
    conf.write_text(
        "openssl_conf = init\n[init]\nengines = engines\n[engines]\npkcs11 = p11\n[p11]\n"
        f"engine_id = pkcs11\ndynamic_path = {ENGINE}\nMODULE_PATH = {token.module}\n"
        "init = 0\n")
    osig = tmp_path / "openssl.sig"
    proc = subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-noattr", "-nosmimecap", "-engine", "pkcs11",
         "-keyform", "engine", "-inkey", f"{token.uri()};type=private?pin-value={PIN}",
         "-signer", str(cert), "-certfile", str(chain), "-in", str(image), "-outform", "DER",
         "-out", str(osig), "-md", "sha256"],
        env=os.environ | token.env | {"OPENSSL_CONF": str(conf)}, capture_output=True,
        text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    root = material.directory / "root.pem"
    for sig in (osig, image.with_name("vmlinuz.sig")):
        openssl_verify(image, sig, root)
        verify = CliRunner().invoke(cli, ["verify", str(image), "--sig", str(sig),
                                          "--trust", str(root)])
        assert verify.exit_code == 0, verify.output
    ours = cms.ContentInfo.load(image.with_name("vmlinuz.sig").read_bytes())["content"]
    theirs = cms.ContentInfo.load(osig.read_bytes())["content"]
    so, st = ours["signer_infos"][0], theirs["signer_infos"][0]
    assert so["sid"].dump() == st["sid"].dump()
    assert so["digest_algorithm"]["algorithm"].native == st["digest_algorithm"][
        "algorithm"].native == "sha256"
    assert so["signature"].native == st["signature"].native  # same key, same digest
    assert st["signed_attrs"].native is None and so["signed_attrs"].native is None
    assert {c.dump() for c in ours["certificates"]} == {c.dump() for c in theirs["certificates"]}


def _expect(result: Result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    out: str = result.output
    for needle in needles:
        assert needle in out, out
    assert "hint:" in out and "Traceback" not in out


def test_errors_are_clear_and_write_nothing(token: Token, material: Material,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    key = rsa_key()
    _, cert, chain = material.issue("hsm-errors", key)
    token.import_key(key, "signer", "01")
    image = _image(tmp_path)
    args = ("--cert", str(cert), "--chain", str(chain))
    _expect(_sign(token, tmp_path, [image], token.uri(), *args, pin="999999"), 3,
            "wrong PIN", "trustboot-test")
    _expect(_sign(token, tmp_path, [image], "pkcs11:token=nope;object=signer", *args), 3,
            "no token matches", "trustboot-test", "an uninitialised token (no label)")
    _expect(_sign(token, tmp_path, [image], token.uri("missing"), *args), 3,
            "no private key matching")
    token.import_key(rsa_key(), "signer", "02")  # a second key with the same label
    _expect(_sign(token, tmp_path, [image], token.uri(), *args), 3, "2 private keys match",
            "id=")
    _expect(_sign(token, tmp_path, [image], token.uri("signer", id="%02"), *args), 3,
            "does not belong", "(--signing-cert)")
    _expect(_sign(token, tmp_path, [image], token.uri(), *args, "--pkcs11-module",
                  str(tmp_path / "missing.so")), 3, "does not exist")
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not a shared object")
    _expect(_sign(token, tmp_path, [image], token.uri(), *args, "--pkcs11-module",
                  str(bogus)), 3, "cannot load PKCS#11 module")
    monkeypatch.delenv("TRUSTBOOT_PKCS11_MODULE")
    _expect(_sign(token, tmp_path, [image], token.uri(), *args), 3, "no PKCS#11 module")
    secret = "pkcs11:token=trustboot-test;object=signer?pin-value=S3cretPIN"
    result = _sign(token, tmp_path, [image], secret, *args)
    _expect(result, 3, "pin-value")
    assert "S3cretPIN" not in result.output
    assert not list(tmp_path.glob("*.sig")) and not list(tmp_path.glob(".*.tmp"))


def test_unsupported_key_type(token: Token, material: Material, tmp_path: Path) -> None:
    dsa_key = dsa.generate_private_key(key_size=2048)
    token.import_key(dsa_key, "dsa")
    _, cert, chain = material.issue("hsm-dsa-cert", rsa_key())
    result = _sign(token, tmp_path, [_image(tmp_path)], token.uri("dsa"), "--cert", str(cert),
                   "--chain", str(chain))
    _expect(result, 3, "DSA", "only RSA and ECDSA")


def test_pin_source_and_no_prompt_without_terminal(token: Token, material: Material,
                                                   tmp_path: Path) -> None:
    key = ec_key()
    _, cert, chain = material.issue("hsm-pin-source", key)
    token.import_key(key, "signer")
    image = _image(tmp_path)
    base = [sys.executable, "-m", "trustboot", "sign", str(image), "--cert", str(cert),
            "--chain", str(chain), "--key"]
    env = os.environ | token.env | {"TRUSTBOOT_PKCS11_MODULE": str(token.module)}
    proc = subprocess.run([*base, token.uri()], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "no terminal" in proc.stderr and "--pin-file" in proc.stderr
    pin = _pin_file(tmp_path)
    proc = subprocess.run([*base, f"{token.uri()}?pin-source=file:{pin}"], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    openssl_verify(image, image.with_name("vmlinuz.sig"), material.directory / "root.pem")
    # the files the URI names are the run's inputs: no output may replace them
    pin_before = pin.read_bytes()
    for target, named in ((pin, "the URI's pin-source"),
                          (token.module, "the URI's module-path")):
        uri = f"{token.uri()}?pin-source=file:{pin}&module-path={token.module}"
        only_uri = {k: v for k, v in env.items() if k != "TRUSTBOOT_PKCS11_MODULE"}
        proc = subprocess.run([*base, uri, "--manifest", str(target)], env=only_uri,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False, timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert f"would replace {named}" in proc.stderr, proc.stderr
    assert pin.read_bytes() == pin_before


def test_uri_parsing() -> None:
    uri = parse_uri("pkcs11:token=My%20HSM;object=sign;id=%01%ff;type=private"
                    "?module-path=/m.so&pin-source=/p")
    assert uri.get("token") == "My HSM" and uri.id == b"\x01\xff"
    assert uri.get("module-path") == "/m.so"
    for bad in ["pkcs11:token=t", "pkcs11:token=t;object=o;type=cert",
                "pkcs11:token=t;object=o;bogus=1", "pkcs11:object=a;object=b",
                "pkcs11:object=o?pin-value"]:
        with pytest.raises(ConfigError):
            parse_uri(bad)
    # pin-value= in the path (where users write it) gets the same refusal as in the query,
    # not "unknown attribute"; a query attribute in the path says where it goes
    with pytest.raises(ConfigError, match="carries the PIN itself") as err:
        parse_uri("pkcs11:object=o;pin-value=123456")
    assert "123456" not in err.value.message
    with pytest.raises(ConfigError, match=r"module-path= .* is a query attribute"):
        parse_uri("pkcs11:object=o;module-path=/m.so")
    # the PIN in the query is refused by the parser itself, for a key or a token alike
    for text, require_key in (("pkcs11:object=o?pin-value=123456", True),
                              ("pkcs11:token=t?pin-value=123456", False)):
        with pytest.raises(ConfigError, match="carries the PIN itself") as err:
            parse_uri(text, require_key=require_key)
        assert "123456" not in err.value.message


@pytest.mark.parametrize("value", ["a%zz", "a%", "%4", "%4g", "a%%20"])
def test_invalid_percent_encoding_is_refused_naming_the_attribute(value: str) -> None:
    """RFC 7512 values are pct-encoded: a broken escape is not taken literally (the key
    looked for would be another)."""
    for text, name in ((f"pkcs11:token=t;object={value}", "object"),
                       (f"pkcs11:token=t;object=o?module-path=/m{value}.so", "module-path")):
        with pytest.raises(ConfigError, match=f"attribute {name} in .* invalid "
                                              "percent-encoding") as err:
            parse_uri(text)
        assert "%25" in (err.value.hint or "")
    assert parse_uri("pkcs11:token=t;object=a%25zz%2F").get("object") == "a%zz/"


def test_a_pin_source_on_another_host_is_refused(token: Token, material: Material,
                                                 tmp_path: Path) -> None:
    """RFC 8089: a file: URI's authority is empty or "localhost" for a local file; a
    pin-source naming another host is refused, not read from this machine."""
    from trustboot.keys.pkcs11 import files_named, secret_source

    pin = _pin_file(tmp_path)
    for authority in ("build-host", "localhost:1", "user@localhost", "10.0.0.1"):
        with pytest.raises(ConfigError, match="only a local file can hold the PIN") as err:
            secret_source(f"file://{authority}{pin}")
        assert "file:///path" in (err.value.hint or "")
    key = ec_key()
    _, cert, chain = material.issue("hsm-pin-host", key)
    token.import_key(key, "signer")
    uri = f"{token.uri()}?pin-source=file://build-host{pin}"
    with pytest.raises(ConfigError, match="only a local file"):
        files_named(uri)
    result = CliRunner().invoke(cli, ["sign", str(_image(tmp_path)), "--key", uri, "--cert",
                                      str(cert), "--chain", str(chain), "--pkcs11-module",
                                      str(token.module)])
    _expect(result, 3, "names a file on host 'build-host'", "only a local file")
    for local in (f"file://localhost{pin}", f"file://LOCALHOST{pin}", f"file://{pin}",
                  f"file:{pin}", str(pin)):
        assert secret_source(local)("the token") == PIN.encode(), local
    with pytest.raises(ConfigError, match="query or fragment"):
        secret_source(f"file:{pin}#x")


def test_a_nul_in_a_pin_or_passphrase_file_is_refused_not_sent(
        token: Token, material: Material, tmp_path: Path) -> None:
    """A PIN file written as a C string ("246810\\0") would reach the token as a wrong PIN
    (a failed login counted towards the lock); it is refused before the login, the same
    for --pin-file, pin-source= and passphrase files, without showing the secret."""
    from trustboot.keys.pkcs11 import secret_source, token_session
    from trustboot.secrets import constant, from_file

    key = ec_key()
    _, cert, chain = material.issue("hsm-pin-nul", key)
    token.import_key(key, "signer")
    image = _image(tmp_path)
    for content in (f"{PIN}\0".encode(), f"{PIN}\0\n".encode(), f"24\x0068{PIN}\n".encode()):
        pin = tmp_path / "pin-nul"
        pin.write_bytes(content)
        pin.chmod(0o600)
        for source in (from_file(pin, "PIN file"), from_file(pin, "passphrase file"),
                       secret_source(f"file:{pin}")):
            with pytest.raises(ConfigError, match="holds a NUL byte") as err:
                source("the token")
            assert PIN not in f"{err.value.message} {err.value.hint}"
        for extra in (["--pin-file", str(pin)], []):
            uri = token.uri() if extra else f"{token.uri()}?pin-source=file:{pin}"
            result = CliRunner().invoke(cli, ["sign", str(image), "--key", uri, "--cert",
                                              str(cert), "--chain", str(chain),
                                              "--pkcs11-module", str(token.module), *extra])
            _expect(result, 3, f"PIN file {pin} holds a NUL byte", "without the NUL")
            assert PIN not in result.output and "wrong PIN" not in result.output
    # a library caller's PIN is checked at the token too
    with pytest.raises(ConfigError, match=r"PIN for token .* holds a NUL byte"), \
            token_session(parse_uri(token.uri()), token.module, constant(f"{PIN}\0".encode())):
        pass


def test_signed_at_is_the_callers_clock(token: Token, material: Material,
                                        tmp_path: Path) -> None:
    key = rsa_key()
    _, cert, chain = material.issue("hsm-now", key)
    token.import_key(key, "signer")
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    run = sign_paths([_image(tmp_path)], token.uri(), secrets=lambda _w: PIN.encode(),
                     cert=cert, chain=chain, now=now, pkcs11_module=token.module)
    assert run.manifest()["signed_at"] == now.isoformat()
    assert run.manifest()["key"] == token.uri()


def test_login_errors_are_translated_from_the_real_exception_classes() -> None:
    """SoftHSM2 never locks a user PIN (it only sets CKF_USER_PIN_COUNT_LOW), so
    CKR_PIN_LOCKED cannot come from a test token: the translation token_session applies is
    checked with python-pkcs11's own exception classes instead."""
    p11 = pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed (extra: pkcs11)")
    from trustboot.errors import ExitCode, OperationalError
    from trustboot.keys.pkcs11 import login_error

    exc = p11.exceptions
    locked = login_error(exc.PinLocked(), "prod-hsm")
    assert isinstance(locked, OperationalError) and locked.exit_code == ExitCode.OPERATIONAL
    assert "PIN of token 'prod-hsm' is locked" in locked.message
    assert locked.hint is not None and "security officer" in locked.hint
    wrong = login_error(exc.PinIncorrect(), "prod-hsm")
    assert isinstance(wrong, ConfigError) and "wrong PIN" in wrong.message
    assert wrong.hint is not None and "lock" in wrong.hint
    for cls in (exc.PinExpired, exc.PinInvalid, exc.PinLenRange):
        refused = login_error(cls(), "t")
        assert isinstance(refused, ConfigError) and cls.__name__ in refused.message
    other = login_error(exc.DeviceRemoved(), "t")
    assert isinstance(other, OperationalError) and "DeviceRemoved" in other.message


def test_a_sign_run_initialises_the_module_once(token: Token, material: Material,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving the key, reading its certificate from the token and signing share one
    C_Initialize; the module is finalised when the run ends (the CLI's or sign_paths')."""
    import pkcs11

    key = ec_key()
    _, cert_path, chain = material.issue("hsm-one-init", key)
    from cryptography import x509

    token.import_key(key, "signer", "0b")
    token.import_cert(x509.load_pem_x509_certificate(cert_path.read_bytes()), "signer", "0b")
    real = pkcs11.lib
    libs: dict[str, object] = {}
    inits: list[str] = []

    def counting(so: str) -> object:
        """python-pkcs11 keeps one lib object per module and initialises it (C_Initialize)
        in lib() unless it is already: count those."""
        before = libs.get(so)
        was_initialised = before is not None and before.initialized  # type: ignore[attr-defined]
        lib = real(so)
        assert before is None or lib is before
        libs[so] = lib
        if not was_initialised:
            inits.append(so)
        return lib

    monkeypatch.setattr(pkcs11, "lib", counting)
    image = _image(tmp_path)
    result = _sign(token, tmp_path, [image], token.uri(id="%0b"), "--chain", str(chain),
                   "--pki", str(tmp_path / "nopki"))
    assert result.exit_code == 0, result.output
    assert inits == [os.path.realpath(token.module)]  # loaded by its checked real path
    (lib,) = libs.values()
    assert not lib.initialized  # type: ignore[attr-defined]
    inits.clear()
    run = sign_paths([image], token.uri(id="%0b"), secrets=lambda _what: PIN.encode(),
                     chain=chain, pkcs11_module=token.module)
    assert len(run.results) == 1 and inits == [os.path.realpath(token.module)]
    assert not lib.initialized  # type: ignore[attr-defined]


@pytest.mark.parametrize("loose", ["file", "dir", "owner"])
def test_a_module_another_user_could_replace_is_not_loaded(
        token: Token, material: Material, tmp_path: Path, loose: str) -> None:
    """The module is code that runs with the PIN in reach: one that group or others may
    write (the file, or a directory above it without the sticky bit), or that another
    user owns (who can chmod it at will), is refused before it is loaded; the same file
    in a directory only its owner writes is used."""
    import shutil

    if loose == "owner" and os.geteuid() != 0:
        pytest.skip("needs root to give the module to another user")

    key = ec_key()
    _, cert, chain = material.issue(f"hsm-mod-{loose}", key)
    token.import_key(key, "signer")
    mods = tmp_path / "mods"
    mods.mkdir(mode=0o755)
    module = mods / "libsofthsm2.so"
    shutil.copyfile(token.module.resolve(), module)
    module.chmod(0o755)
    (mods / "link.so").symlink_to(module)
    if loose == "owner":
        os.chown(module, 65534, 65534)  # nobody's; 0755, so only the mode would pass
    else:
        (module if loose == "file" else mods).chmod(0o777 if loose == "dir" else 0o757)
    image = _image(tmp_path)
    for given in (module, mods / "link.so"):
        res = _sign(token, tmp_path, [image], token.uri(), "--cert", str(cert), "--chain",
                    str(chain), "--pkcs11-module", str(given), "--pki", str(tmp_path / "p"))
        assert res.exit_code == 3, res.output
        assert ("owned by uid 65534" if loose == "owner" else "writable by other users") \
            in res.output, res.output
        assert not image.with_name("vmlinuz.sig").exists()
    if loose == "owner":
        os.chown(module, os.geteuid(), os.getegid())
    else:
        (module if loose == "file" else mods).chmod(0o755)
    res = _sign(token, tmp_path, [image], token.uri(), "--cert", str(cert), "--chain",
                str(chain), "--pkcs11-module", str(mods / "link.so"),
                "--pki", str(tmp_path / "p"))
    assert res.exit_code == 0, res.output


def test_a_percent_encoded_pin_value_is_masked_in_the_refusal() -> None:
    for text in ("pkcs11:token=t;object=o?pin%2Dvalue=98761234",
                 "pkcs11:token=t;object=o;%70in-value=98761234"):
        with pytest.raises(ConfigError) as err:
            parse_uri(text)
        assert "98761234" not in str(err.value), str(err.value)


@pytest.mark.parametrize("text", [
    "pkcs11:token=tb;object=ec1?pin-value=SEC&RET",  # '&' in the PIN
    "pkcs11:token=tb;object=ec1;pin-value=SEC;RET",  # ';' in the PIN
    "pkcs11:token=tb;object=ec1?pin-value =SECRET",  # a space before '='
    "pkcs11:token=tb;object=ec1?p in-value\t=SECRET",
    "pkcs11:token=tb;object=ec1?PIN-VALUE%3DSECRET",  # '=' percent-encoded
    "pkcs11:token=tb;object=ec1?%50IN-VALUE=SECRET",  # an upper-case letter encoded
    "pkcs11:token=tb;object=ec1?pin%2Dvalue%20=SECRET&x",
])
def test_a_pin_value_in_any_spelling_is_refused_without_showing_the_uri(
        text: str, tmp_path: Path) -> None:
    """No part of a URI that carries the PIN is echoed: a PIN holding '&' or ';' would
    otherwise reach the message as the 'unknown attribute' after it."""
    with pytest.raises(ConfigError, match="carries the PIN itself") as err:
        parse_uri(text)
    shown = f"{err.value.message}\n{err.value.hint}"
    for secret in ("SEC", "RET", "object=ec1"):
        assert secret not in shown, shown
    assert mask_pin(text) == text[:text.index("?") if "?" in text else text.index(";pin")
                                  ] + ("?" if "?" in text else ";") + "pin-value=***"
    result = CliRunner().invoke(cli, ["sign", str(_image(tmp_path)), "--key", text])
    assert result.exit_code == 3, result.output
    assert "SEC" not in result.output and "RET" not in result.output, result.output
    assert not list(tmp_path.glob("*.sig"))
