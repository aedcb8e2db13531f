"""The demo: a release of the demo recipe, end to end, on a fresh machine.

A CA with a code-signing and a TLS server certificate, the recipe's stand-in images, a
release to a ``file://`` origin in the work directory, served on 127.0.0.1 over HTTPS by
a short-lived in-process server with the demo CA's certificate; then the entry script is
fetched over HTTPS and judged as iPXE would, and a kernel with one byte changed is shown
to be refused. iPXE is built only when a source tree is given. Everything stays in the
work directory, including the generated passphrases (the one thing a real CA never does).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets as pysecrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from trustboot import fsutil
from trustboot.ca.profiles import CAOptions
from trustboot.ca.store import CertificateAuthority, fingerprint
from trustboot.cms import verify as rules
from trustboot.errors import ConfigError, VerificationError
from trustboot.ipxe.build import ProgressCallback
from trustboot.keys.keyfile import load_key
from trustboot.publish.manifest import MANIFEST_NAME, release_prefix
from trustboot.publish.proxy import direct_to
from trustboot.release.pipeline import ReleaseResult, check_entry, run_release, trust_of
from trustboot.release.plan import ReleaseOptions, validate
from trustboot.release.recipe import Recipe, parse_recipe
from trustboot.release.serve import serve_https
from trustboot.secrets import from_file

Step = Callable[[str, str], None]
SERVER_NAME = "demo-origin"


@dataclass
class DemoResult:
    workdir: Path
    pki: Path
    root_sha256: str
    release: ReleaseResult
    entry_url: str
    tamper_rule: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "pki": str(self.pki),
                "root_sha256": self.root_sha256, "entry_url": self.entry_url,
                "release": self.release.to_json(), "files": self.files,
                "tampered_copy_rejected_by": self.tamper_rule}


def _write_demo_file(path: Path, size: int, seed: str) -> None:
    """Deterministic pseudo-random content in 1 MiB blocks (no size-sized buffer)."""
    block = hashlib.shake_256(seed.encode()).digest(1 << 20)
    with fsutil.create_file(path) as fh:
        left = size
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


def prepare_demo(recipe_text: str, source: str, workdir: Path, *, now: dt.datetime,
                 step: Step) -> tuple[Recipe, CertificateAuthority]:
    """Validate the recipe, then create the CA, certificates and stand-in images."""
    probe = parse_recipe(recipe_text, source)  # the whole recipe is checked first
    # public material; the secrets go in a 0700 subdirectory. Refused before anything is
    # written when another user could change it (theirs, or one above it that others can
    # write): its owner could move the secrets directory away and put a link in its place
    fsutil.make_output_dir(workdir, "demo work directory")
    pki = workdir / "pki"
    if CertificateAuthority.exists(pki):
        raise ConfigError(f"{workdir} already holds a demo CA",
                          hint="pass a new --workdir, or remove the old one")
    if probe.signer.key.scheme != "ca":
        raise ConfigError(f"{source}: the demo creates its own CA; signer.key must name a "
                          "certificate of it (e.g. demo-signer)")
    secrets_dir = workdir / "secrets"
    fsutil.ensure_private_dir(secrets_dir)
    for name in ("ca.pass", "signer.pass"):
        if not (secrets_dir / name).exists():
            fsutil.write_private_file(secrets_dir / name,
                                      pysecrets.token_urlsafe(24).encode() + b"\n")
    ca_pass = from_file(secrets_dir / "ca.pass")
    key_pass = from_file(secrets_dir / "signer.pass")
    step("ca", f"creating the demo CA in {pki}")
    ca, _ = CertificateAuthority.init(pki, ca_pass, common_name=f"trustboot {probe.name} CA",
                                      key_type="rsa-3072", options=CAOptions(), now=now)
    ca.issue("codesign", probe.signer.key.value, ca_pass, key_pass, key_type="rsa-3072",
             now=now)
    ca.issue("server", SERVER_NAME, ca_pass, key_pass, sans=["127.0.0.1"],
             key_type="rsa-3072", now=now)
    step("ca", f"issued code-signing '{probe.signer.key.value}' and TLS server "
               f"'{SERVER_NAME}' (127.0.0.1)")
    recipe_dir = workdir / "recipe"
    fsutil.make_dirs(recipe_dir)
    recipe_file = recipe_dir / f"{probe.name}.yaml"
    fsutil.atomic_write(recipe_file, recipe_text.encode())
    for f in probe.demo:
        step("images", f"generating stand-in {f.path} ({f.size} bytes)")
        _write_demo_file(recipe_dir / f.path, f.size, f"{probe.name}/{f.path}")
    recipe = parse_recipe(recipe_text, str(recipe_file), recipe_dir)
    return recipe, ca


def new_workdir() -> Path:
    """A new private directory in TMPDIR for a demo, once TMPDIR passes
    :func:`fsutil.check_parents` (as a release's work directory must)."""
    import tempfile

    fsutil.check_parents(Path(tempfile.gettempdir()) / "trustboot-demo-*",
                         "demo work directory")
    return Path(tempfile.mkdtemp(prefix="trustboot-demo-"))  # 0700 whatever the umask


def run_demo(recipe_text: str, source: str, workdir: Path, *, ipxe_source: Path | None,
             cache_dir: Path | None = None, step: Step = lambda _s, _m: None,
             build_progress: ProgressCallback | None = None,
             now: dt.datetime | None = None) -> DemoResult:
    now = now or dt.datetime.now(dt.UTC)
    workdir = workdir.absolute()  # it becomes a file:// URL, which names an absolute path
    recipe, ca = prepare_demo(recipe_text, source, workdir, now=now, step=step)
    pki = ca.path
    key_pass = from_file(workdir / "secrets" / "signer.pass")
    origin_dir = workdir / "origin"
    fsutil.make_dirs(origin_dir)
    server = ca.get(SERVER_NAME)
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM)
                         for c in (server.load_cert(), ca.issuing_cert))
    key = load_key(server.key_path, key_pass, "the demo origin's TLS key")
    with serve_https(origin_dir, cert_chain_pem=chain_pem, key=key,
                     scratch=workdir / "secrets") as port, direct_to("127.0.0.1", port):
        public = f"https://127.0.0.1:{port}/"
        step("origin", f"file://{origin_dir} served at {public} (TLS certificate from the "
                       "demo CA)")
        options = ReleaseOptions(
            passphrases=key_pass, ca_home=pki, origin_url=f"file://{origin_dir}",
            public_url=public, origin_ca_file=pki / "ca.crt", ipxe_source=ipxe_source,
            cache_dir=cache_dir or workdir / "cache")
        try:
            release = run_release(recipe, options, now=now, workdir=workdir / "work",
                                  progress=step, build_progress=build_progress)
        finally:
            # staging links and build copies: everything that matters is on the origin
            shutil.rmtree(workdir / "work", ignore_errors=True)
        # Like `origin check`: what a booting machine fetches first, over HTTPS.
        v = validate(recipe, options, now=now)
        trust = trust_of(v)
        report = check_entry(release.entry_url, trust, None, ca_file=pki / "ca.crt", now=now)
        step("check", f"{release.entry_url}: {report.tls_version} {report.cipher} with the "
                      "demo CA, entry and signature fetched, iPXE would run it")
        rule = _tamper_control(origin_dir, release, trust, now)
        step("tamper", f"a kernel with one byte changed is refused ({rule})")
    files = (release.manifest or {}).get("files", [])
    return DemoResult(workdir=workdir, pki=pki, root_sha256=fingerprint(ca.root_cert),
                      release=release, entry_url=release.entry_url, tamper_rule=rule,
                      files=files)


def _tamper_control(origin_dir: Path, release: ReleaseResult, trust: Any,
                    now: dt.datetime) -> str:
    """The negative control: the published signature over a kernel with one byte changed."""
    manifest = release.manifest or {}
    kernel = next(f for f in manifest["files"] if f["sig"] and f["name"] != "boot.ipxe"
                  and f["name"] != MANIFEST_NAME)
    base = origin_dir / release_prefix(release.release)
    data = bytearray(fsutil.read_capped(base / kernel["name"], 1 << 30, "kernel"))
    data[len(data) // 2] ^= 0x01
    sig = fsutil.read_capped(base / kernel["sig"], rules.MAX_SIGNATURE_SIZE, "signature")
    digests = {h: hashlib.new(h, data).digest() for h in ("sha256", "sha384", "sha512")}
    verdict = rules.verify_signature(sig, digests, trust=list(trust.roots), now=now,
                                     signer_name=trust.signer_name,
                                     extra_certs=list(trust.extra_certs))
    if verdict.ok or verdict.failure is None:
        raise VerificationError("a tampered kernel verified: this is a bug",
                                rule="tamper-control")
    return verdict.failure.rule
