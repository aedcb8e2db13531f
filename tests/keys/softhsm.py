"""A fresh SoftHSM2 token in a private directory, for PKCS#11 tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

MODULE_CANDIDATES = [Path("/usr/lib/softhsm/libsofthsm2.so"),
                     Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
                     Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")]
PIN = "246810"
SO_PIN = "135791"


def softhsm_module() -> Path:
    for path in MODULE_CANDIDATES:
        if path.is_file():
            return path
    pytest.skip("SoftHSM2 is not installed (Debian package softhsm2)")


def require_softhsm() -> Path:
    if shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2-util is not on PATH (Debian package softhsm2)")
    pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed (extra: pkcs11)")
    return softhsm_module()


@dataclass
class Token:
    directory: Path
    module: Path
    label: str

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.directory / "softhsm2.conf")}

    def run(self, *argv: str) -> str:
        proc = subprocess.run(argv, env=os.environ | self.env, capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def import_key(self, key: PrivateKeyTypes, label: str, key_id: str = "01") -> None:
        pem = self.directory / f"{label}.{key_id}.pem"
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        pem.chmod(0o600)
        self.run("softhsm2-util", "--import", str(pem), "--token", self.label, "--label", label,
                 "--id", key_id, "--pin", PIN)
        pem.unlink()

    def import_cert(self, cert: x509.Certificate, label: str, key_id: str = "01") -> None:
        der = self.directory / f"{label}.{key_id}.der"
        der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        self.run("pkcs11-tool", "--module", str(self.module), "--login", "--pin", PIN,
                 "--write-object", str(der), "--type", "cert", "--label", label, "--id", key_id,
                 "--token-label", self.label)

    def uri(self, label: str = "signer", **extra: str) -> str:
        attrs = "".join(f";{k}={v}" for k, v in extra.items())
        return f"pkcs11:token={self.label};object={label}{attrs}"


def make_token(directory: Path, label: str = "trustboot-test") -> Token:
    module = require_softhsm()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / "tokens").mkdir(mode=0o700, exist_ok=True)
    (directory / "softhsm2.conf").write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n")
    token = Token(directory, module, label)
    token.run("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN,
              "--so-pin", SO_PIN)
    return token


def token_objects(token: Token) -> set[tuple[str, bytes]]:
    """(label, CKA_ID) of every object in the token (opened with its own environment)."""
    import pkcs11

    with pytest.MonkeyPatch.context() as mp:
        for key, value in token.env.items():
            mp.setenv(key, value)
        lib = pkcs11.lib(str(token.module))
        try:
            with lib.get_token(token_label=token.label).open(user_pin=PIN) as s:
                return {(o[pkcs11.Attribute.LABEL], bytes(o[pkcs11.Attribute.ID]))
                        for o in s.get_objects({})}
        finally:
            lib.finalize()


def openssl_verify(image: Path, sig: Path, root: Path) -> None:
    """The independent check: openssl accepts the detached DER signature under ``root``."""
    proc = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                           str(sig), "-content", str(image), "-CAfile", str(root), "-purpose",
                           "any", "-out", os.devnull], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def replace_key(token: Token, ref: str, kind: str, *, keep_public: bool) -> None:
    """Put a new key (``kind`` "ec": P-256, "rsa": 2048 bits) under the label and CKA_ID
    that the pkcs11: URI ``ref`` names: the whole pair, or (``keep_public``) only the
    private key, the old public key object staying as it was."""
    import urllib.parse

    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters

    attrs = dict(part.split("=", 1) for part in ref.split(":", 1)[1].split("?")[0].split(";"))
    label, key_id = attrs["object"], urllib.parse.unquote_to_bytes(attrs["id"])
    private_template = {Attribute.SIGN: True, Attribute.SENSITIVE: True}
    lib = pkcs11.lib(str(token.module))
    try:
        with lib.get_token(token_label=token.label).open(rw=True, user_pin=PIN) as session:
            if kind == "rsa":
                public, private = session.generate_keypair(
                    pkcs11.KeyType.RSA, 2048, label="replacement", id=b"\x99", store=True,
                    private_template=private_template)
            else:
                params = session.create_domain_parameters(
                    pkcs11.KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True)
                public, private = params.generate_keypair(
                    label="replacement", id=b"\x99", store=True,
                    private_template=private_template)
            doomed = {ObjectClass.PRIVATE_KEY} | (set() if keep_public
                                                  else {ObjectClass.PUBLIC_KEY})
            for obj in list(session.get_objects({Attribute.LABEL: label,
                                                 Attribute.ID: key_id})):
                if obj.object_class in doomed:
                    obj.destroy()
            for obj in (private,) if keep_public else (private, public):
                obj[Attribute.LABEL] = label
                obj[Attribute.ID] = key_id
            if keep_public:
                public.destroy()
    finally:
        lib.finalize()
