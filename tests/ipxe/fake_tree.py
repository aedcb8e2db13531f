"""A stand-in iPXE tree whose Makefile fakes a build, for tests that run without iPXE.

Its make writes each target as: a header, the SHA-256 fingerprints of the TRUST= files, the
DER of every CERT= certificate and the embedded script, so the cache, the manifest and the
"is the trust really in the binary" check can be exercised for real. Environment knobs:
FAKE_FAIL=1 makes the build fail after some output; FAKE_DROP_TRUST=1 leaves the
fingerprints out; FAKE_HOLD=FILE creates FILE and sleeps (a build to kill); every run
appends the target to the file $FAKE_RUNS.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MAKEFILE = """\
FAKE_PY ?= python3
# FORCE: the real Makefile tracks TRUST/CERT/EMBED itself; the fake simply always rebuilds.
bin/% bin-x86_64-efi/% bin-arm64-efi/%: FORCE
\t@echo "  [DEPS] core/version.c"
\t@echo "  [BUILD] $@.o"
\t@mkdir -p $(dir $@)
\t@$(FAKE_PY) fake_build.py "$@" "$(TRUST)" "$(CERT)" "$(EMBED)" "$(SOURCE_DATE_EPOCH)"
FORCE:
"""

BUILDER = """\
import hashlib, os, sys
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
target, trust, cert, embed, epoch = sys.argv[1:6]
with open(os.environ["FAKE_RUNS"], "a") as log:
    log.write(target + "\\n")
if os.environ.get("FAKE_HOLD"):  # stand still mid-build, to be killed by the test
    import time
    open(os.environ["FAKE_HOLD"], "w").close()
    time.sleep(120)
if os.environ.get("FAKE_FAIL"):
    for i in range(40):
        print(f"  [BUILD] bin/file{i}.o", flush=True)
    print("core/broken.c:12: error: expected ';' before '}' token", file=sys.stderr)
    sys.exit(2)
out = [b"FAKE-IPXE " + target.encode() + b" " + epoch.encode()]
if not os.environ.get("FAKE_DROP_TRUST"):
    for f in filter(None, trust.split(",")):
        c = x509.load_pem_x509_certificate(open(f, "rb").read())
        out.append(hashlib.sha256(c.public_bytes(Encoding.DER)).digest())
for f in filter(None, cert.split(",")):
    for c in x509.load_pem_x509_certificates(open(f, "rb").read()):
        out.append(c.public_bytes(Encoding.DER))
if embed:
    out.append(open(embed, "rb").read())
for h in sorted(os.listdir("config/local")):
    out.append(open(os.path.join("config/local", h), "rb").read())
open(target, "wb").write(b"\\n".join(out))
"""


def make_fake_tree(top: Path) -> Path:
    """Create the fake tree at ``top`` (the checkout root, with src/ inside)."""
    src = top / "src"
    for rel in ("config", "include/ipxe", "config/local"):
        (src / rel).mkdir(parents=True, exist_ok=True)
    (src / "Makefile").write_text(MAKEFILE)
    (src / "Makefile.housekeeping").write_text("# fake\n")
    (src / "config" / "general.h").write_text("/* fake */\n")
    (src / "include" / "ipxe" / "image.h").write_text("/* fake */\n")
    (src / "fake_build.py").write_text(BUILDER)
    return top


# make runs with a minimal environment: these reach the fake build through
# trustboot.ipxe.build.MAKE_ENV_PASSTHROUGH (see fake_env_passthrough).
FAKE_VARS = ("FAKE_PY", "FAKE_RUNS", "FAKE_FAIL", "FAKE_DROP_TRUST", "FAKE_HOLD")


def fake_env() -> dict[str, str]:
    return {"FAKE_PY": sys.executable}


def fake_env_passthrough(monkeypatch: Any) -> None:
    """Let make see the FAKE_* knobs (and nothing else of the test's environment)."""
    from trustboot.ipxe import build

    monkeypatch.setattr(build, "MAKE_ENV_PASSTHROUGH", FAKE_VARS)
