"""Benchmark: `trustboot resign` of a live release of 10 objects on a real nginx origin.

Starts nginx (the config `trustboot origin nginx-config` generates, TLS and a client
certificate from a fresh `trustboot ca`), publishes a release of 5 signed files (entry
script, kernel, initrd, two firmware images: 10 objects with their .sig), then times the
whole `trustboot resign` process (interpreter start-up included) with a fresh 7-day signer:
read back and verify all 10 objects over HTTPS as iPXE would, sign, server-side copies,
upload the signatures and manifest, read the new release back, switch. Each trial uses a
new signer (a new release id); `noop_s` is a rerun with the same signer (verify only).

    python bench/bench_resign.py [--kernel-mib 12] [--initrd-mib 64] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.publish.conftest import Nginx, Pki, scratch_nginx  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel-mib", type=int, default=12)
    parser.add_argument("--initrd-mib", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("nginx"):
        print(json.dumps({"skipped": "needs nginx (+ libnginx-mod-http-dav-ext)"}))
        return 0
    with scratch_nginx("bench-resign-") as (base, pki, nginx):
        return run(args, base, pki, nginx)


def run(args: argparse.Namespace, base: Path, pki: Pki, nginx: Nginx) -> int:
    rel = base / "release"
    rel.mkdir()
    sizes = {"boot.ipxe": None, "vmlinuz": args.kernel_mib << 20,
             "initrd.img": args.initrd_mib << 20, "ipxe.efi": 1 << 20,
             "undionly.kpxe": 100 << 10}
    for name, size in sizes.items():
        data = (f"#!ipxe\nkernel {nginx.url}releases/r1/vmlinuz\n".encode() if size is None
                else os.urandom(size))
        (rel / name).write_bytes(data)
    pki.sign([rel / n for n in sizes], rel)
    objects = sorted(p.name for p in rel.iterdir())
    assert len(objects) == 10, objects
    total = sum((rel / n).stat().st_size for n in objects)
    env = dict(os.environ, PYTHONPATH=str(REPO),
               TRUSTBOOT_PUBLISH_CACHE=str(base / "publish-cache.json"))
    origin = ["--pki", str(pki.dir), "--client-cert", "publisher",
              "--client-key-passphrase-file", str(pki.key_pass)]

    def cli(*argv: str) -> tuple[float, dict[str, object]]:
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "trustboot", *argv, "--json"], env=env,
                              capture_output=True, check=False)
        wall = time.monotonic() - t
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.decode())
        out: dict[str, object] = json.loads(proc.stdout)
        return wall, out

    cli("publish", str(rel), nginx.url, "--release-id", "r1", *origin)
    runs, noops = [], []
    for trial in range(args.trials):
        signer = f"fresh-{trial}"
        pki.issue("codesign", signer, "--days", "7")
        wall, out = cli("resign", nginx.url, "--key", signer, "--passphrase-file",
                        str(pki.key_pass), *origin)
        assert out["changed"], out
        runs.append(wall)
        wall, out = cli("resign", nginx.url, "--key", signer, "--passphrase-file",
                        str(pki.key_pass), *origin)
        assert not out["changed"], out
        noops.append(wall)
    result = {
        "objects": len(objects),
        "bytes": total,
        "resign_s": [round(x, 2) for x in runs],
        "resign_median_s": round(statistics.median(runs), 2),
        "noop_s": [round(x, 2) for x in noops],
        "noop_median_s": round(statistics.median(noops), 2),
        "load_average_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
