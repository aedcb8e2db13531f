"""The audit policy file and the release manifest it may point at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustboot.audit.policy import load_manifest, load_policy, policy_from_dict
from trustboot.errors import ConfigError

SHA = "a" * 64


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_policy_with_manifest(tmp_path: Path) -> None:
    (tmp_path / "release.json").write_text(json.dumps({
        "release": "2024.06", "origin": "https://boot.example/r/2024.06/", "ca_sha256": "C" * 64,
        "files": [{"name": "boot.ipxe", "sha256": SHA, "size": 12}],
    }))
    pol = load_policy(write(tmp_path, f"""
version: 1
authorized_servers:
  - name: core
    ip: 192.0.2.1
    mac: 52-54-00-AA-BB-CC
    role: dhcp
  - duid: "00:03:00:01:52:54:00:aa:bb:cc"
    role: dhcpv6
expected_files:
  - name: undionly.kpxe
    sha256: "{'B' * 64}"
release_manifest: release.json
expected_origin: ['https://[2001:db8::1]/r/']
tftp_allowed: false
"""))
    assert [f.name for f in pol.expected_files] == ["undionly.kpxe", "boot.ipxe"]
    assert pol.expected_files[0].sha256 == "b" * 64
    assert pol.expected_files[1].source == "manifest release.json"
    assert pol.release == "2024.06" and pol.ca_sha256 == "c" * 64
    assert pol.origins == ("https://boot.example/r/2024.06/", "https://[2001:db8::1]/r/")
    assert pol.tftp_allowed is False
    assert pol.authorized_match(role="dhcp", ip="192.0.2.1", mac="52:54:00:aa:bb:cc")
    assert not pol.authorized_match(role="dhcp", ip="192.0.2.1", mac="52:54:00:aa:bb:cd")
    assert not pol.authorized_match(role="proxydhcp", ip="192.0.2.1", mac="52:54:00:aa:bb:cc")
    assert pol.authorized_match(role="dhcpv6", duid="00030001525400aabbcc")
    assert pol.under_origin("https://boot.example/r/2024.06/boot.ipxe")
    assert not pol.under_origin("https://boot.example/r/2024.07/boot.ipxe")
    assert not pol.under_origin("http://boot.example/r/2024.06/boot.ipxe")


def test_expected_file_name_matching() -> None:
    pol = policy_from_dict({"expected_files": [{"name": "undionly.kpxe", "sha256": SHA},
                                               {"name": "efi/ipxe.efi", "sha256": SHA}]})
    assert pol.expected_by_name("/srv/tftp/undionly.kpxe")
    assert pol.expected_by_name("boot/efi/ipxe.efi")
    assert not pol.expected_by_name("ipxe.efi")
    assert not pol.expected_by_name("undionly.kpxe.bak")
    # a name that only ends like a released one is another file (unexpected, not a mismatch)
    assert not pol.expected_by_name("evil-undionly.kpxe")
    assert not pol.expected_by_name("boot/myefi/ipxe.efi")


def test_ca_file_fingerprint_must_agree(tmp_path: Path) -> None:
    import datetime
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "r")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "root.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    fp = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    pol = load_policy(write(tmp_path, "expected_ca_file: root.pem\n"))
    assert pol.ca_sha256 == fp and pol.ca_file == tmp_path / "root.pem"
    with pytest.raises(ConfigError, match="not the expected") as refused:
        load_policy(write(tmp_path, f"expected_ca_file: root.pem\nexpected_ca_sha256: '{SHA}'\n"))
    assert refused.value.hint and "same root" in refused.value.hint  # what to do next


@pytest.mark.parametrize(("text", "message"), [
    ("authorized_servers:\n  - ip: 192.0.2.300\n", "not an IP address"),
    ("authorized_servers:\n  - mac: 52:54:00\n", "as a (base-60) number"),
    ("authorized_servers:\n  - mac: '52:54:00'\n", "not a MAC address"),
    ("authorized_servers:\n  - role: dhcp\n", "at least one of ip, mac, duid"),
    ("authorized_servers:\n  - ip: 192.0.2.1\n    role: gateway\n", "unknown role"),
    ("authorized_servers:\n  - ip: 192.0.2.1\n    ipaddr: 1\n", "unknown key"),
    ("expected_files:\n  - name: a\n    sha256: 1234\n", "as a number"),
    ("expected_files:\n  - name: a\n    sha256: abc\n", "64 hex digits"),
    ("expected_files:\n  - name: a\n    sha256: '" + "a" * 64 + "'\n    size: -1\n",
     "expected a byte count"),
    ("expected_origni: https://x/\n", "unknown key"),
    ("expected_origin: ftp://x/\n", "http(s):// URL"),
    ("expected_origin: 'https:///releases/'\n", "http(s):// URL"),  # no host
    ("authorized_servers:\n  - duid: '000300010'\n", "DUID as hex digits"),  # odd digits
    ("tftp_allowed: maybe\n", "true or false"),
    ("version: 2\n", "unsupported policy version"),
    ("- a\n- b\n", "mapping at the top level"),
    ("release_manifest: missing.json\n", "missing.json does not exist"),
])
def test_invalid_policies_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.yaml") as info:
        load_policy(write(tmp_path, text))
    assert message in str(info.value) or message in (info.value.hint or "")


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy.yaml:\d+:\d+: invalid YAML"):
        load_policy(write(tmp_path, "a: 1\nb: [unclosed\n"))


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy .*nope\.yaml does not exist"):
        load_policy(tmp_path / "nope.yaml")


@pytest.mark.parametrize("which", ["policy", "release manifest"])
def test_fifo_policy_or_manifest_is_refused_unread(tmp_path: Path, which: str) -> None:
    """The audit is bounded in time: a FIFO given as --policy or --release-manifest (or
    named by a policy's release_manifest) blocked it forever in open(), before the first
    probe. It is refused unread, as every file trustboot is given."""
    import os
    import threading

    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            if which == "policy":
                load_policy(fifo)
            else:
                load_policy(write(tmp_path, "release_manifest: input.fifo\n"))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the open() so the thread ends, then fail
        with open(os.open(fifo, os.O_RDWR | os.O_NONBLOCK), "wb", closefd=True):
            pass
        worker.join(10)
        pytest.fail(f"loading a FIFO as the {which} blocked")
    assert len(errors) == 1 and isinstance(errors[0], ConfigError), errors
    assert "input.fifo is not a regular file" in str(errors[0])


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_manifest(write(tmp_path, "{", "m.json"))
    with pytest.raises(ConfigError, match=r"files\[0\].sha256"):
        load_manifest(write(tmp_path, json.dumps({"files": [{"name": "a", "sha256": "x"}]}),
                            "m.json"))
    # unknown manifest keys (written by a later trustboot release) are tolerated
    m = load_manifest(write(tmp_path, json.dumps({
        "release": 7, "signer": "x", "files": [{"name": "a", "sha256": SHA, "url": "u"}]}),
        "m.json"))
    assert m.release == "7" and m.files[0].name == "a"
    # a manifest saying it is `trustboot release`'s (version) is held to that format
    with pytest.raises(ConfigError, match=r"missing key\(s\) release, created"):
        load_manifest(write(tmp_path, json.dumps({
            "version": 1, "files": [{"name": "a", "sha256": SHA}]}), "m.json"))


def test_a_policy_larger_than_its_cap_is_refused_by_size(tmp_path: Path) -> None:
    big = tmp_path / "policy.yaml"
    big.write_bytes(b"# " + b"x" * (4 * 1024 * 1024) + b"\n")
    with pytest.raises(ConfigError, match=r"policy .*policy\.yaml is larger than 4194304 bytes"):
        load_policy(big)


def test_a_manifest_nested_to_exhaust_the_parser_is_a_config_error(tmp_path: Path) -> None:
    """A release manifest may come from an origin: a few KiB of '[' was a RecursionError
    (exit 70); it is malformed JSON like any other (the parser publish uses: jsonin)."""
    p = tmp_path / "release.json"
    p.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_manifest(p)


@pytest.mark.parametrize("origin", ["https://[x/", "https://[x]/", "https://h:99999/",
                                    "https://h:port/", "https://a\uff03b/"])
def test_a_malformed_origin_is_a_config_error_naming_the_key(tmp_path: Path,
                                                             origin: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.yaml: expected_origin: expected an "
                                          r"http\(s\):// URL"):
        load_policy(write(tmp_path, json.dumps({"expected_origin": origin})))
    # the same origin in a release manifest, plain or as `trustboot release` writes it
    for extra in ({}, {"version": 1, "created": "2024-06-01T00:00:00Z"}):
        write(tmp_path, json.dumps({"release": "r1", "origin": origin, "files": [], **extra}),
              "release.json")
        with pytest.raises(ConfigError, match=r"policy\.yaml: release_manifest: .*origin"):
            load_policy(write(tmp_path, "release_manifest: release.json\n"))


@pytest.mark.parametrize("key", ["release_manifest", "expected_ca_file"])
def test_a_nul_in_a_policy_path_is_a_config_error_naming_the_key(tmp_path: Path,
                                                                 key: str) -> None:
    with pytest.raises(ConfigError, match=rf"policy\.yaml: {key}: .*NUL byte") as info:
        load_policy(write(tmp_path, json.dumps({key: "x\0y"})))
    assert info.value.hint and "fix the path" in info.value.hint


def test_read_capped_refuses_a_path_with_a_nul_byte(tmp_path: Path) -> None:
    """Every input file trustboot reads goes through read_capped: a NUL in the name is a
    ConfigError there (os.open raises ValueError, which it did not catch)."""
    from trustboot.fsutil import read_capped

    (tmp_path / "a").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"recipe .* has a NUL byte in its name"):
        read_capped(tmp_path / "a\0b", 10, "recipe")
    assert read_capped(tmp_path / "a", 10, "recipe") == b"x"


HUGE = "A" * 100_000 + "\x1b[2J"  # a hostile value: long, with a terminal control at its end
VERSIONED = {"version": 1, "release": "r1", "created": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("doc", [
    {"files": [{"name": [HUGE], "sha256": SHA}]},
    {"files": [{"name": "a", "sha256": SHA, "size": HUGE}]},
    {"origin": HUGE, "files": []},
    {**VERSIONED, "files": [{"name": HUGE, "sha256": SHA, "size": 1}]},
    {**VERSIONED, "files": [{"name": "a/" + HUGE[:1000] + "!", "sha256": SHA, "size": 1}]},
    {**VERSIONED, "release": HUGE, "files": []},
    {**VERSIONED, "entry": HUGE, "files": []},
    {**VERSIONED, "entry_path": HUGE, "files": []},
    {**VERSIONED, "files": [{"name": "a", "sha256": SHA, "size": 1, "sig": HUGE}]},
    {**VERSIONED, "files": [{"name": "b" * 1000, "sha256": SHA, "size": 1}] * 2},
], ids=["name-not-a-string", "size", "origin", "name", "name-segment", "release", "entry",
        "entry-path", "sig", "duplicates"])
def test_a_huge_manifest_value_is_quoted_cut(tmp_path: Path, doc: dict[str, object]) -> None:
    """What an error quotes of a hostile manifest is cut with clean's marker: a megabyte
    name is not echoed whole to the terminal (or a CI log), and nothing in it drives one."""
    with pytest.raises(ConfigError) as caught:
        load_manifest(write(tmp_path, json.dumps(doc), "m.json"))
    shown = caught.value.diagnostics()
    assert len(shown) < 2000, shown[:300]
    assert "more chars]" in shown and "\x1b" not in shown, shown
