"""Benchmark `trustboot sign` / `trustboot verify` against openssl, in one run.

    python bench/bench_sign.py                 # 2 GiB files, 500 small files
    python bench/bench_sign.py --size 256M --small 100
    python bench/bench_sign.py --rss-size 8G   # also: trustboot's peak RSS at 8 GiB

Every figure is printed beside its goal (issue 11):
  * large file: sign within 1.05x of `openssl dgst -sha256` of the same file, peak RSS
    <= 64 MiB (and `openssl cms -sign` for reference);
  * two large files in one call: well under two sequential runs (hashed in parallel);
  * 500 small files in one call >= 10x faster than 500 `openssl cms -sign` calls, with a
    file key and with a SoftHSM2 PKCS#11 key (when softhsm2 and python-pkcs11 are there),
    each file key's figure beside its floor on this machine (FLOOR below);
  * verify within 1.05x of `openssl cms -verify`.
Each command runs as a child process. Peak RSS is the child's own, measured by
`/usr/bin/time -f %M` around it (wait4's ru_maxrss of a child forked from this Python
process also counts the parent's pages it inherited). Wall time is the best of --repeat
runs, tools alternating: a shared machine only ever adds time; the range of the per-run
ratios and the load average are printed beside it, to judge the noise.

Conditions, the same for both tools: trustboot's bytecode is compiled first (as `pip
install` does; an editable install run with PYTHONDONTWRITEBYTECODE would otherwise compile
every module on every run), and every run writes fresh signature files, as a CI job signing
new build outputs does. Each timed many-files run writes into a new directory of its own
(`trustboot sign --out DIR`, `openssl cms -sign -out DIR/...`) and nothing is deleted until
the end: on an ext4 without a journal, creating an inode skips every inode of its group freed
in the last minutes (the kernel's recently_deleted check, up to 6 minutes while the inode
table is dirty), so deleting the previous runs' outputs would make every later creation scan
past thousands of them, a cost of the benchmark rather than of either tool (it weighs 10x
more on the tool that is 10x faster). `--replace-outputs` measures that way instead: the
signatures beside the files, the previous run's removed just before. Before each timed
many-files run the filesystem is synced (untimed), so no tool pays for the previous one's
writes: trustboot makes its signatures durable before it renames them into place (here one
syncfs, as little else waits to be written after that sync; a fsync per file on a busy
machine), openssl does not sync at all.
"""

from __future__ import annotations

import argparse
import compileall
import itertools
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
    # An ECDSA P-256 signer too (iPXE >= 2.0.0 verifies it): the many-files figure for it.
    ec_entry = ca.issue("codesign", "bench-signer-ec", passphrases, passphrases,
                        key_type="ec-p256").entry
    paths = {"pki": pki, "root": pki / "ca.crt", "chain": pki / "chain.pem",
             "cert": entry.cert_path, "key": entry.key_path,
             "plainkey": directory / "plainkey.pem",
             "ec_cert": ec_entry.cert_path, "ec_key": ec_entry.key_path,
             "ec_plainkey": directory / "ec-plainkey.pem"}
    # openssl gets unencrypted keys: its usual use, and no per-call KDF cost to its name.
    for src, dest in ((entry.key_path, "plainkey"), (ec_entry.key_path, "ec_plainkey")):
        key = load_key(src, passphrases, "the bench signing key")
        paths[dest].write_bytes(key.private_bytes(
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
    parser.add_argument("--replace-outputs", action="store_true",
                        help="many files: write the signatures beside the files, the "
                        "previous run's deleted just before (see the module docstring)")
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
        key_args = ["--key", f"file:{pki['key']}", "--signing-cert", str(pki["cert"]),
                    "--signing-chain", str(pki["chain"]), "--passphrase-env", "TB_BENCH_PASS",
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
            bench_small(args.repeat, args.small, tb, key_args, env, work, pki,
                        replace_outputs=args.replace_outputs)

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


# The least any Python signer must do for the many-files figure, run as its own process:
# start the interpreter, import cryptography, unlock the encrypted key (its KDF), and make
# the signatures on every core (forked, as `trustboot sign` does). Nothing is read or
# checked; with an output directory (argv[3]) each signature goes to a new file there, the
# least a signer writing .sig files does (create and write, as openssl's -out: no temp
# name, no rename, no sync). Its time bounds what any Python `trustboot sign` can reach.
FLOOR = """\
import os, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
with open(sys.argv[1], "rb") as fh:
    key = serialization.load_pem_private_key(fh.read(), os.environb[b"TB_BENCH_PASS"])
count, workers = int(sys.argv[2]), os.cpu_count() or 1
digest = os.urandom(32)
scheme = (ec.ECDSA(utils.Prehashed(hashes.SHA256())),) if isinstance(
    key, ec.EllipticCurvePrivateKey) else (padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
pids = []
for w in range(workers):
    pid = os.fork()
    if pid == 0:
        for i in range(w, count, workers):
            sig = key.sign(digest, *scheme)
            if len(sys.argv) > 3:
                fd = os.open(f"{sys.argv[3]}/f{i}.sig", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o644)
                os.write(fd, sig)
                os.close(fd)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
"""


def bench_small(repeat: int, count: int, tb: list[str], key_args: list[str],
                env: dict[str, str], work: Path, pki: dict[str, Path], *,
                replace_outputs: bool = False) -> None:
    """``count`` small files in one call (RSA file key, ECDSA file key, SoftHSM2 key) vs
    one openssl call each, and the floor of the RSA figure on this machine."""
    small_dir = work / "small"
    small_dir.mkdir(mode=0o755)
    smalls = []
    for i in range(count):
        p = small_dir / f"f{i:04d}.ipxe"
        p.write_bytes(os.urandom(4096))
        smalls.append(p)
    listing = work / "small.txt"
    listing.write_text("".join(f"{p}\n" for p in smalls))
    token_env = make_token(work / "hsm", pki["plainkey"])
    outputs = [Path(f"{p}.sig") for p in smalls] + [Path(f"{p}.osig") for p in smalls]
    ec_args = ["--key", f"file:{pki['ec_key']}", "--signing-cert", str(pki["ec_cert"]),
               "--signing-chain", str(pki["chain"]), "--passphrase-env", "TB_BENCH_PASS",
               "--pki", str(pki["pki"])]

    out_runs = work / "out"
    out_runs.mkdir(mode=0o755)
    run_numbers = itertools.count()

    def fresh() -> Path | None:
        """Where the next run writes (None: beside the files); see the module docstring."""
        if replace_outputs:
            remove(outputs)
            out = None
        else:
            out = out_runs / str(next(run_numbers))
            out.mkdir(mode=0o755)  # `--out` refuses a group- or world-writable one
        os.sync()
        return out

    def tb_run(args: list[str], extra_env: dict[str, str] | None = None) -> float:
        out = fresh()
        where = [] if out is None else ["--out", str(out)]
        return run([*tb, "sign", "--files-from", str(listing), *where, *args],
                   env | (extra_env or {}))[0]

    def openssl_run(cert: Path, key: Path) -> float:
        out = fresh()
        start = time.perf_counter()
        for p in smalls:
            target = f"{p}.osig" if out is None else f"{out / p.name}.osig"
            subprocess.run(["openssl", "cms", "-sign", "-binary", "-noattr", "-in", str(p),
                            "-signer", str(cert), "-inkey", str(key),
                            "-certfile", str(pki["chain"]), "-outform", "DER", "-out",
                            target, "-md", "sha256"], check=True)
        return time.perf_counter() - start

    runs: dict[str, list[float]] = {k: [] for k in ("tb", "os", "hsm", "ec", "os_ec", "floor",
                                                     "floor_files", "floor_ec")}
    def floor_run(files: bool = False, key: Path = pki["key"]) -> float:
        out = fresh() if files else None  # fresh files, and synced, as for the tools
        if files and out is None:
            out = work / "floor-out"
            out.mkdir(mode=0o755, exist_ok=True)
            for f in out.iterdir():
                f.unlink()
            os.sync()
        return run([sys.executable, "-c", FLOOR, str(key), str(count),
                    *([str(out)] if out is not None else [])], env)[0]

    for _ in range(repeat):  # the tools alternate, so load shifts hit all of them
        runs["tb"].append(tb_run(key_args))
        runs["os"].append(openssl_run(pki["cert"], pki["plainkey"]))
        runs["floor"].append(floor_run())
        runs["floor_files"].append(floor_run(files=True))
        if token_env is not None:
            runs["hsm"].append(tb_run(["--key", "pkcs11:token=bench;object=signer",
                                       "--signing-cert", str(pki["cert"]),
                                       "--signing-chain", str(pki["chain"]),
                                       "--pin-env", "TB_BENCH_PIN", "--pki",
                                       str(pki["pki"])], token_env))
        runs["ec"].append(tb_run(ec_args))
        runs["os_ec"].append(openssl_run(pki["ec_cert"], pki["ec_plainkey"]))
        runs["floor_ec"].append(floor_run(files=True, key=pki["ec_key"]))
    remove(outputs)

    def speedup(mine: str, theirs: str) -> tuple[float, str]:
        ratios = [o / t for o, t in zip(runs[theirs], runs[mine], strict=True)]
        return min(runs[theirs]) / min(runs[mine]), spread(ratios, ".1f")

    os_many = min(runs["os"])
    rsa, rsa_runs = speedup("tb", "os")
    print(f"{count} small  RSA-2048 file key, one call {min(runs['tb']):6.2f}s | openssl cms "
          f"-sign ({count} calls) {os_many:6.2f}s | speedup {rsa:5.1f}x ({rsa_runs}x; goal "
          f">= 10x: {verdict(rsa >= 10)}) | {load()}")
    floor = min(runs["floor"])
    print(f"             floor for any Python signer here (interpreter, cryptography, key "
          f"unlock, {count} RSA-2048 signatures on {os.cpu_count()} cores, no file touched): "
          f"{floor:.2f}s = at most {os_many / floor:.1f}x")
    floor_files = min(runs["floor_files"])
    print(f"             the same, also writing the {count} signature files as openssl does "
          f"(create, write; no rename, no sync): {floor_files:.2f}s = at most "
          f"{os_many / floor_files:.1f}x")
    ec, ec_runs = speedup("ec", "os_ec")
    print(f"{count} small  ECDSA P-256 file key (iPXE >= 2.0.0), one call "
          f"{min(runs['ec']):6.2f}s | openssl cms -sign ({count} calls, same key) "
          f"{min(runs['os_ec']):6.2f}s | speedup {ec:5.1f}x ({ec_runs}x; goal >= 10x: "
          f"{verdict(ec >= 10)})")
    floor_ec = min(runs["floor_ec"])
    print(f"             floor as above, with this key and writing the files: {floor_ec:.2f}s "
          f"= at most {min(runs['os_ec']) / floor_ec:.1f}x")
    if runs["hsm"]:
        hsm, hsm_runs = speedup("hsm", "os")
        print(f"{count} small  PKCS#11 (SoftHSM2, RSA-2048), one call {min(runs['hsm']):6.2f}s "
              f"| speedup {hsm:5.1f}x ({hsm_runs}x) vs openssl with a file key "
              f"(file key: {rsa:.1f}x)")


if __name__ == "__main__":
    main()
