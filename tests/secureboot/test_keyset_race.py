"""Several `secureboot init` runs at once on one CA home, as real processes: one wins, the
others fail clearly, and nothing of the winner's (staging, files, token keys) is touched."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.keys.softhsm import PIN, make_token, token_objects
from trustboot.errors import ConfigError
from trustboot.keys.pkcs11 import parse_uri
from trustboot.secrets import constant
from trustboot.secureboot import keyset

from .conftest import PASS

RUNS = 3


def _race(pki: Path, extra: list[str], env: dict[str, str]) -> list[tuple[int, str]]:
    """RUNS inits started together; (exit code, output) of each."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "trustboot", "secureboot", "init", "--pki", str(pki),
         "--name", f"Race {i}", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, **env}) for i in range(RUNS)]
    return [(p.wait(timeout=300), p.communicate()[0]) for p in procs]


def _one_winner(results: list[tuple[int, str]]) -> None:
    codes = sorted(rc for rc, _ in results)
    assert codes == [0] + [3] * (RUNS - 1), results
    for rc, out in results:
        assert "internal error" not in out, out
        if rc:
            assert "already holds a Secure Boot key set" in out, out


def _export(pki: Path, tmp_path: Path, extra: list[str], env: dict[str, str]) -> None:
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "trustboot", "secureboot", "export", "--pki",
                           str(pki), "--out", str(out), *extra], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "PK.auth").is_file() and (out / "db.auth").is_file()


def test_concurrent_inits_one_winner(tmp_path: Path, pw: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    _one_winner(_race(pki, ["--passphrase-file", str(pw)], {}))
    ks = keyset.load_keyset(pki)
    assert {c.subject.rfc4514_string() for c in ks.certificates.values()} <= {
        f"CN=Race {i} Secure Boot {r}" for i in range(RUNS) for r in keyset.ROLES}
    # no staging directory of any run is left, and the set is whole
    assert sorted(p.name for p in pki.iterdir() if p.name != ".lock") == ["secureboot"]
    _export(pki, tmp_path, ["--passphrase-file", str(pw)], {})


def test_concurrent_inits_in_a_token_keep_the_winners_keys(tmp_path: Path) -> None:

    token = make_token(tmp_path / "hsm", label="sb-race")
    env = {**token.env, "TB_PIN": PIN}
    extra = ["--pkcs11", f"pkcs11:token={token.label}", "--pkcs11-module", str(token.module),
             "--passphrase-env", "TB_PIN"]
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    _one_winner(_race(pki, extra, env))
    meta = json.loads((pki / keyset.DIRNAME / keyset.META).read_text())
    recorded = {parse_uri(meta["pkcs11"][r]).id for r in keyset.ROLES}
    pairs = token_objects(token)
    # exactly the winner's three pairs: none deleted, none left by the losers
    assert {i for _, i in pairs} == recorded, pairs
    assert {label for label, _ in pairs} == {f"trustboot-sb-{r}" for r in keyset.ROLES}
    _export(pki, tmp_path, ["--passphrase-env", "TB_PIN"], env)


def test_only_abandoned_staging_is_swept(tmp_path: Path, pw: Path) -> None:
    """A staging directory whose run still holds it (a run of an older trustboot, which
    took no CA lock) is left alone; one whose run is gone is removed."""
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    live, dead = pki / ".secureboot.livelive.tmp", pki / ".secureboot.deaddead.tmp"
    live.mkdir()
    dead.mkdir()
    (live / "PK.crt").write_text("in use\n")
    holder = subprocess.Popen(["flock", "--exclusive", str(live), "sleep", "60"])
    try:
        for _ in range(100):  # until flock(1) holds it
            if subprocess.run(["flock", "--nonblock", str(live), "true"],
                              check=False).returncode:
                break
            time.sleep(0.05)
        else:
            pytest.fail("flock(1) never took the lock")
        keyset.init_keyset(pki, constant(PASS.encode()), name="Sweep",
                           now=dt.datetime.now(dt.UTC))
        assert (live / "PK.crt").read_text() == "in use\n"
        assert not dead.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_key_set_appearing_before_the_rename_is_not_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone outside trustboot's lock creates PKI/secureboot while the keys are made
    (here: while the PIN is asked): the rename is refused as "already holds", their
    directory is left as it is, and the keys this run made in the token are removed."""
    import pkcs11

    token = make_token(tmp_path / "hsm", label="sb-late")
    for key, value in token.env.items():
        monkeypatch.setenv(key, value)
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)

    def pin_and_intruder(_what: str) -> bytes:
        (pki / keyset.DIRNAME).mkdir(exist_ok=True)
        (pki / keyset.DIRNAME / "theirs").write_text("theirs\n")
        return PIN.encode()

    with pytest.raises(ConfigError, match="already holds a Secure Boot key set"):
        keyset.init_keyset(pki, pin_and_intruder, name="Late", now=dt.datetime.now(dt.UTC),
                           pkcs11=(f"pkcs11:token={token.label}", token.module))
    assert [p.name for p in (pki / keyset.DIRNAME).iterdir()] == ["theirs"]
    assert not list(pki.glob(".secureboot.*"))
    lib = pkcs11.lib(str(token.module))
    try:
        with lib.get_token(token_label=token.label).open(user_pin=PIN) as s:
            assert list(s.get_objects({})) == []
    finally:
        lib.finalize()


def test_inits_on_other_ca_homes_sharing_a_token_keep_each_others_keys(
        tmp_path: Path) -> None:
    """No CA lock is shared between CA homes: their label checks and generations race
    in the token, and a run that then fails removes only the pairs it made (by CKA_ID),
    never another run's under the same label: every key set that was made keeps all its
    keys and exports. (Two such runs may both succeed with the same labels: their
    key sets name their keys by id=, so each signs with its own.)"""

    for round_ in range(3):
        token = make_token(tmp_path / f"hsm{round_}", label="sb-shared")
        env = {**token.env, "TB_PIN": PIN}
        homes = [tmp_path / f"r{round_}-pki{i}" for i in range(RUNS)]
        procs = []
        for i, pki in enumerate(homes):
            pki.mkdir(mode=0o755)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "trustboot", "secureboot", "init", "--pki", str(pki),
                 "--name", f"Shared {i}", "--pkcs11", f"pkcs11:token={token.label}",
                 "--pkcs11-module", str(token.module), "--passphrase-env", "TB_PIN"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, **env}))
        results = [(p.wait(timeout=300), p.communicate()[0]) for p in procs]
        for rc, out in results:
            # (1: SoftHSM2 itself sometimes fails a session while another process rewrites
            # the token's files: "module error listing tokens: GeneralError")
            assert rc in (0, 1, 3) and "internal error" not in out, results
        winners = [pki for pki, (rc, _) in zip(homes, results, strict=True) if rc == 0]
        recorded = set()
        for pki in winners:
            meta = json.loads((pki / keyset.DIRNAME / keyset.META).read_text())
            recorded |= {(f"trustboot-sb-{r}", parse_uri(meta["pkcs11"][r]).id)
                         for r in keyset.ROLES}
        pairs = token_objects(token)
        assert recorded <= pairs, (pairs, results)  # no winner lost a key
        for i, pki in enumerate(winners):
            _export(pki, tmp_path / f"r{round_}-{i}", ["--passphrase-env", "TB_PIN"], env)
