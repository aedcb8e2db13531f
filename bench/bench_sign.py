"""Benchmark `trustboot sign` / `trustboot verify` against openssl, in one run.

    python bench/bench_sign.py                 # 2 GiB files, 500 small files
    python bench/bench_sign.py --size 256M --small 100
    python bench/bench_sign.py --rss-size 8G   # also: trustboot's peak RSS at 8 GiB

Every figure is printed beside its goal (issue 11):
  * large file: sign within 1.05x of `openssl dgst -sha256` of the same file, peak RSS
    <= 64 MiB (and `openssl cms -sign` for reference);
  * two large files in one call: well under two sequential runs (hashed in parallel);
  * 500 small files in one call >= 10x faster than 500 `openssl cms -sign` calls, with a
    file key and with a SoftHSM2 PKCS#11 key (when softhsm2 and python-pkcs11 are there);
  * verify within 1.05x of `openssl cms -verify`.
Each command runs as a child process. Peak RSS is the child's own, measured by
`/usr/bin/time -f %M` around it (wait4's ru_maxrss of a child forked from this Python
process also counts the parent's pages it inherited). Wall time is the best of --repeat
runs, tools alternating: a shared machine only ever adds time; the range of the per-run
ratios and the load average are printed beside it, to judge the noise.

Conditions, the same for both tools: trustboot's bytecode is compiled first (as `pip
install` does; an editable install run with PYTHONDONTWRITEBYTECODE would otherwise compile
every module on every run), and every run writes fresh signature files (the previous run's
are removed untimed), as a CI job signing new build outputs does. Before each timed
many-files run the filesystem is synced (untimed), so no tool pays for the previous one's
deletions and writes: trustboot syncs each signature it writes (the journal commit would
carry them), openssl does not.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

import trustboot
from trustboot import secrets
from trustboot.ca.store import CertificateAuthority
from trustboot.keys.keyfile import load_key

PASSPHRASE = "bench passphrase"
TIME = Path("/usr/bin/time")
SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "123456"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and the child's own peak RSS (bytes; 0 if unmeasured)."""
    report = None
    if TIME.exists():
        fd, name = tempfile.mkstemp(prefix="tb-bench-rss-")
        os.close(fd)
        report = Path(name)
        argv = [str(TIME), "-f", "%M", "-o", str(report), "--", *argv]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(argv)}\n"
                         f"{proc.stderr.decode(errors='replace')}")
    rss = 0
    if report is not None:
        lines = report.read_text().split()
        report.unlink()
        rss = int(lines[-1]) * 1024 if lines else 0
    return wall, rss


def best(samples: list[tuple[float, int]]) -> tuple[float, int]:
    """Best wall time, worst RSS."""
    return min(t for t, _ in samples), max(r for _, r in samples)


def spread(ratios: list[float], fmt: str = ".2f") -> str:
    """The range of per-run ratios (each run's tools ran back to back)."""
    return f"runs {min(ratios):{fmt}}-{max(ratios):{fmt}}"


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def remove(paths: list[Path]) -> None:
    """Untimed: the next run writes fresh files."""
    for path in paths:
        path.unlink(missing_ok=True)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA made with trustboot's own `ca init` / `ca issue codesign` (RSA-2048 signer)."""
    passphrases = secrets.constant(PASSPHRASE.encode())
    pki = directory / "pki"
    ca, _ = CertificateAuthority.init(pki, passphrases)
    entry = ca.issue("codesign", "bench-signer", passphrases, passphrases,
                     key_type="rsa-2048").entry
    paths = {"pki": pki, "root": pki / "ca.crt", "chain": pki / "chain.pem",
             "cert": entry.cert_path, "key": entry.key_path,
             "plainkey": directory / "plainkey.pem"}
    # openssl gets an unencrypted key: its usual use, and no per-call KDF cost to its name.
    key = load_key(entry.key_path, passphrases, "the bench signing key")
    paths["plainkey"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


def make_token(directory: Path, plainkey: Path) -> dict[str, str] | None:
    """A SoftHSM2 token holding the bench key; None (with the reason) when unavailable."""
    if not SOFTHSM.is_file() or shutil.which("softhsm2-util") is None:
        print("pkcs11: skipped (softhsm2 is not installed)")
        return None
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        print("pkcs11: skipped (python-pkcs11 is not installed: pip install trustboot[pkcs11])")
        return None
    (directory / "tokens").mkdir(mode=0o700, parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    env = os.environ | {"SOFTHSM2_CONF": str(conf)}
    for argv in (["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", PIN,
                  "--so-pin", "654321"],
                 ["softhsm2-util", "--import", str(plainkey), "--token", "bench", "--label",
                  "signer", "--id", "01", "--pin", PIN]):
        subprocess.run(argv, env=env, check=True, capture_output=True)
    return {"SOFTHSM2_CONF": str(conf), "TB_BENCH_PIN": PIN,
            "TRUSTBOOT_PKCS11_MODULE": str(SOFTHSM)}


def make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as fh:
        left = size
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)


def warm(path: Path) -> None:
    with path.open("rb", buffering=0) as fh:
        while fh.read(8 << 20):
            pass


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G", help="large file size (default 2G)")
    parser.add_argument("--small", type=int, default=500, help="number of small files")
    parser.add_argument("--rss-size", default=None,
                        help="also sign a file this large (e.g. 8G) and report peak RSS")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measurement; the best of each is reported")
    parser.add_argument("--parts", default="large,pair,small",
                        help="comma-separated subset of: large, pair, small")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"large", "pair", "small"}:
        parser.error("--parts takes large, pair and small")
    compileall.compile_dir(Path(trustboot.__file__).parent, quiet=1)

    tb = [sys.executable, "-m", "trustboot"]
    env = os.environ | {"TB_BENCH_PASS": PASSPHRASE}
    mib = 1 << 20
    if not TIME.exists():
        print(f"note: {TIME} is missing (Debian package time): RSS figures are not measured")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="tb-bench-") as tmp:
        work = Path(tmp)
        pki = make_pki(work)
        key_args = ["--key", f"file:{pki['key']}", "--cert", str(pki["cert"]),
                    "--chain", str(pki["chain"]), "--passphrase-env", "TB_BENCH_PASS",
                    "--pki", str(pki["pki"])]
        size = parse_size(args.size)
        print(f"large file: {size / (1 << 30):.2f} GiB; {os.cpu_count()} cores; {load()}")
        big, big2 = work / "big.img", work / "big2.img"
        tb_rss = 0
        if parts & {"large", "pair"}:
            make_file(big, size)
            warm(big)
        if "large" in parts:
            tb_rss = bench_large(args.repeat, tb, key_args, env, big, pki)
        if "pair" in parts:
            make_file(big2, size)
            warm(big2)
            pair_one, pair_seq = [], []
            for _ in range(args.repeat):
                pair_one.append(run([*tb, "sign", str(big), str(big2), *key_args], env)[0])
                pair_seq.append(run([*tb, "sign", str(big), *key_args], env)[0]
                                + run([*tb, "sign", str(big2), *key_args], env)[0])
            one, seq = min(pair_one), min(pair_seq)
            ratios = [a / b for a, b in zip(pair_one, pair_seq, strict=True)]
            print(f"two large    one call {one:6.2f}s | two sequential calls {seq:6.2f}s | "
                  f"ratio {one / seq:.2f} ({spread(ratios)}; goal: well under 1, parallel "
                  f"hashing: {verdict(one / seq <= 0.75)}) | {load()}")
        remove([big, big2])
        if "small" in parts:
            base, _ = best([run([*tb, "sign", "--help"]) for _ in range(args.repeat)])
            print(f"start-up     `trustboot sign --help` {base:.3f}s")
            bench_small(args.repeat, args.small, tb, key_args, env, work, pki)

        if args.rss_size:
            huge = work / "huge.img"
            hsize = parse_size(args.rss_size)
            make_file(huge, hsize)
            t, rss = run([*tb, "sign", str(huge), *key_args], env)
            print(f"sign {hsize / (1 << 30):.2f} GiB: trustboot {t:7.2f}s rss {rss / mib:.1f} "
                  f"MiB (vs {tb_rss / mib:.1f} MiB at {size / (1 << 30):.2f} GiB)")


def bench_large(repeat: int, tb: list[str], key_args: list[str], env: dict[str, str],
                big: Path, pki: dict[str, Path]) -> int:
    """Sign and verify one large file, against openssl; returns trustboot's peak RSS."""
    os_sig = big.with_name("big.openssl.sig")
    os_sign_argv = ["openssl", "cms", "-sign", "-binary", "-noattr", "-in", str(big),
                    "-signer", str(pki["cert"]), "-inkey", str(pki["plainkey"]),
                    "-certfile", str(pki["chain"]), "-outform", "DER", "-out", str(os_sig),
                    "-md", "sha256"]
    dgst_argv = ["openssl", "dgst", "-sha256", "-out", os.devnull, str(big)]
    tb_verify_argv = [*tb, "verify", str(big), "--trust", str(pki["root"])]
    os_verify_argv = ["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                      "-in", str(big) + ".sig", "-content", str(big), "-CAfile",
                      str(pki["root"]), "-purpose", "any", "-out", os.devnull]
    samples: dict[str, list[tuple[float, int]]] = {k: [] for k in ("ts", "dg", "os", "tv", "ov")}
    for _ in range(repeat):
        remove([Path(str(big) + ".sig"), os_sig])
        samples["ts"].append(run([*tb, "sign", str(big), *key_args], env))
        samples["dg"].append(run(dgst_argv))
        samples["os"].append(run(os_sign_argv))
        samples["tv"].append(run(tb_verify_argv))
        samples["ov"].append(run(os_verify_argv))
    (tb_sign, tb_rss), (dgst, dg_rss), (os_sign, os_rss), (tb_ver, tb_vrss), (os_ver, _) = (
        best(samples[k]) for k in ("ts", "dg", "os", "tv", "ov"))

    def ratios(a: str, b: str) -> list[float]:
        return [x[0] / y[0] for x, y in zip(samples[a], samples[b], strict=True)]

    mib = 1 << 20
    print(f"sign large   trustboot {tb_sign:6.2f}s | openssl dgst -sha256 {dgst:6.2f}s | "
          f"ratio {tb_sign / dgst:.3f} ({spread(ratios('ts', 'dg'), '.3f')}; goal <= 1.05: "
          f"{verdict(tb_sign / dgst <= 1.05)}) | {load()}")
    print(f"             openssl cms -sign {os_sign:6.2f}s (ratio {tb_sign / os_sign:.3f})")
    print(f"peak RSS     trustboot sign {tb_rss / mib:5.1f} MiB (goal <= 64 MiB: "
          f"{verdict(0 < tb_rss <= 64 * mib)}) | openssl cms -sign {os_rss / mib:5.1f} MiB | "
          f"openssl dgst {dg_rss / mib:5.1f} MiB | trustboot verify {tb_vrss / mib:5.1f} MiB")
    print(f"verify large trustboot {tb_ver:6.2f}s | openssl cms -verify {os_ver:6.2f}s | "
          f"ratio {tb_ver / os_ver:.3f} ({spread(ratios('tv', 'ov'), '.3f')}; goal <= 1.05: "
          f"{verdict(tb_ver / os_ver <= 1.05)})")
    remove([Path(str(big) + ".sig"), os_sig])
    return tb_rss


def bench_small(repeat: int, count: int, tb: list[str], key_args: list[str],
                env: dict[str, str], work: Path, pki: dict[str, Path]) -> None:
    """``count`` small files in one call (file key, SoftHSM2 key) vs one openssl call each."""
    small_dir = work / "small"
    small_dir.mkdir()
    smalls = []
    for i in range(count):
        p = small_dir / f"f{i:04d}.ipxe"
        p.write_bytes(os.urandom(4096))
        smalls.append(p)
    listing = work / "small.txt"
    listing.write_text("".join(f"{p}\n" for p in smalls))
    token_env = make_token(work / "hsm", pki["plainkey"])
    outputs = [Path(f"{p}.sig") for p in smalls] + [Path(f"{p}.osig") for p in smalls]
    tb_runs, os_runs, hsm_runs = [], [], []
    for _ in range(repeat):
        remove(outputs)
        os.sync()
        tb_runs.append(run([*tb, "sign", "--files-from", str(listing), *key_args], env)[0])
        if token_env is not None:
            remove(outputs)
            os.sync()
            hsm_runs.append(run([*tb, "sign", "--files-from", str(listing), "--key",
                                 "pkcs11:token=bench;object=signer", "--cert",
                                 str(pki["cert"]), "--chain", str(pki["chain"]),
                                 "--pin-env", "TB_BENCH_PIN", "--pki", str(pki["pki"])],
                                env | token_env)[0])
        remove(outputs)
        os.sync()
        start = time.perf_counter()
        for p in smalls:
            subprocess.run(["openssl", "cms", "-sign", "-binary", "-noattr", "-in", str(p),
                            "-signer", str(pki["cert"]), "-inkey", str(pki["plainkey"]),
                            "-certfile", str(pki["chain"]), "-outform", "DER", "-out",
                            str(p) + ".osig", "-md", "sha256"], check=True)
        os_runs.append(time.perf_counter() - start)
    tb_many, os_many = min(tb_runs), min(os_runs)
    speedups = [o / t for o, t in zip(os_runs, tb_runs, strict=True)]
    print(f"{count} small  file key, one call {tb_many:6.2f}s | openssl cms -sign "
          f"({count} calls) {os_many:6.2f}s | speedup {os_many / tb_many:5.1f}x "
          f"({spread(speedups, '.1f')}x; goal >= 10x: {verdict(os_many / tb_many >= 10)}) | "
          f"{load()}")
    if hsm_runs:
        hsm = min(hsm_runs)
        speedups = [o / t for o, t in zip(os_runs, hsm_runs, strict=True)]
        print(f"{count} small  PKCS#11 (SoftHSM2), one call {hsm:6.2f}s | speedup "
              f"{os_many / hsm:5.1f}x ({spread(speedups, '.1f')}x) vs openssl with a file key "
              f"(file key: {os_many / tb_many:.1f}x)")


if __name__ == "__main__":
    main()
