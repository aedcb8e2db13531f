"""Benchmark `trustboot release` against openssl + curl, in one run, on a real nginx origin.

    python bench/bench_release.py                        # 64 MiB kernel + 512 MiB initrd
    python bench/bench_release.py --kernel 16M --initrd 64M

Goals (issue 10): a release of a 64 MiB kernel and a 512 MiB initrd to the nginx WebDAV/TLS
origin with a warm iPXE cache (here: prebuilt firmware, which skips the build the same way)
takes <= 1.3x the sum of `openssl cms -sign` of both files and `curl -T` of both files; a
re-run of the unchanged release takes < 3 s. Each command runs as a child process; the
files are read once first so every tool starts from a warm page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.publish.conftest import make_pki, start_nginx, stop_nginx  # noqa: E402
from trustboot.keys.keyfile import load_key  # noqa: E402
from trustboot.secrets import from_file  # noqa: E402


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 8 << 20)
            fh.write(os.urandom(n))
            left -= n


def plain_key(src: Path, dest: Path, passfile: Path) -> Path:
    key = load_key(src, from_file(passfile), "bench key")
    dest.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    dest.chmod(0o600)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="64M")
    ap.add_argument("--initrd", default="512M")
    args = ap.parse_args()
    trustboot = str(Path(sys.executable).with_name("trustboot"))
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        base = Path(tmp)
        pki = make_pki(base)
        (base / "nginx").mkdir()
        nginx = start_nginx(pki, base / "nginx")
        try:
            d = base / "lab"
            (d / "images").mkdir(parents=True)
            (d / "firmware" / "bin").mkdir(parents=True)
            (d / "firmware" / "bin" / "undionly.kpxe").write_bytes(b"prebuilt" * 8192)
            shutil.copytree(pki.dir, d / "pki")
            shutil.copy(pki.key_pass, d / "key.pass")
            (d / "key.pass").chmod(0o600)
            files = {"vmlinuz": parse_size(args.kernel), "initrd.img": parse_size(args.initrd)}
            for name, size in files.items():
                write_random(d / "images" / name, size)
                (d / "images" / name).read_bytes()  # warm the page cache
            (d / "lab.yaml").write_text(f"""\
version: 1
name: bench
ca: {{home: pki}}
signer: {{key: boot-signer, passphrase: {{file: key.pass}}}}
ipxe: {{prebuilt: firmware, targets: [bin/undionly.kpxe]}}
origin: {{url: '{nginx.url}', ca_file: pki/ca.crt, client_cert: publisher}}
entries:
  - {{name: linux, kernel: images/vmlinuz, initrds: [images/initrd.img], cmdline: quiet}}
release: {{id: "bench-{{digest8}}"}}
""")
            signer_key = plain_key(pki.key("boot-signer"), base / "signer.pem", pki.key_pass)
            client_key = plain_key(pki.key("publisher"), base / "client.pem", pki.key_pass)
            reference = 0.0
            for name in files:
                src = d / "images" / name
                reference += timed([
                    "openssl", "cms", "-sign", "-binary", "-noattr", "-outform", "DER",
                    "-signer", str(pki.cert("boot-signer")), "-inkey", str(signer_key),
                    "-certfile", str(pki.dir / "chain.pem"), "-md", "sha256",
                    "-in", str(src), "-out", str(base / f"{name}.sig")])
                reference += timed([
                    "curl", "-sSf", "--cacert", str(pki.ca), "--cert",
                    str(pki.cert("publisher")), "--key", str(client_key), "-T", str(src),
                    f"{nginx.url}reference-{name}"])
            start = time.perf_counter()
            first = subprocess.run([trustboot, "release", str(d / "lab.yaml"), "--json"],
                                   capture_output=True, text=True, check=True)
            release = time.perf_counter() - start
            stages = {s["stage"]: s["seconds"] for s in json.loads(first.stdout)["stages"]}
            rerun_start = time.perf_counter()
            out = subprocess.run([trustboot, "release", str(d / "lab.yaml"), "--json"],
                                 capture_output=True, text=True, check=True)
            rerun = time.perf_counter() - rerun_start
            uploaded = json.loads(out.stdout)["uploaded"]
            if os.environ.get("BENCH_PROFILE"):
                subprocess.run([sys.executable, "-m", "cProfile", "-s", "cumtime", trustboot,
                                "release", str(d / "lab.yaml"), "--json"], check=True,
                               stdout=open(os.environ["BENCH_PROFILE"], "w"))
        finally:
            stop_nginx(nginx)
    ratio = release / reference
    print(f"openssl cms -sign + curl -T (both files): {reference:7.2f} s")
    print(f"trustboot release:                        {release:7.2f} s  ratio {ratio:.2f} "
          f"(goal <= 1.30) {'ok' if ratio <= 1.3 else 'MISSED'}")
    print("  stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in stages.items()))
    print(f"re-run of the unchanged release:          {rerun:7.2f} s  (goal < 3 s) "
          f"{'ok' if rerun < 3 else 'MISSED'}; uploaded {len(uploaded)} objects")


if __name__ == "__main__":
    main()
