"""Rotating the CA certificates.

Issuing CA rotation (:func:`rotate_issuing`): a new issuing CA under the same root becomes
the one that issues; the previous one stays in the index, so its leaves keep verifying with
their own chain, until :func:`retire_issuing`. Firmware trusts the root, so nothing changes
for machines in the field. Each new CA certificate is named ``<CA name> Issuing CA <n>``
(or ``Root CA <n>``), the CA name cut to fit a common name when it is too long
(:func:`numbered_cn`).

Root rotation is a procedure with steps, because firmware in the field embeds the root
(iPXE's TRUST=) and must be rebuilt before signatures under a new root can boot::

    stable --begin--> begun --promote--> promoted --retire--> stable

* ``begin``: the next root and an issuing CA under it are created beside the active ones;
  the active chain still signs. Firmware built now (``ipxe build --pki``, ``ca export``)
  trusts both roots.
* ``promote``: once the fleet runs firmware that trusts the next root (shown by a build
  manifest listing its fingerprint, or the operator's word), it becomes the active root:
  every current leaf is certified again (same key) under the new issuing CA, so signing
  switches to the new chain.
* ``retire``: the previous root and its issuing CAs are marked retired: out of trust and
  exports, their certificates and keys kept in the pki as an archive.

The state lives in index.json (``rotation``), committed atomically with the certificates
of each step, so a step killed at any point either did not happen or is complete; running
the same step again finishes its remaining work (views, CRL) and reports it done. A step
out of order is refused with the current step and the command that comes next.

CA keys held in a PKCS#11 token (``ca init --pkcs11``) cannot be rotated here yet.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from trustboot.ca import evidence as evidence_mod
from trustboot.ca import profiles
from trustboot.ca.evidence import FleetEvidence, evidence_json
from trustboot.ca.profiles import PrivateKey
from trustboot.ca.store import (
    DEFAULT_DAYS,
    ISSUING_NAME,
    MAX_COMMON_NAME,
    ROOT_CRL,
    ROOT_CRL_DAYS,
    ROOT_NAME,
    CertificateAuthority,
    IssuedEntry,
    _cert_rel,
    _check_days,
    _entry,
    _key_rel,
    _set_aside_leftovers,
    fingerprint,
    pem,
    utcnow,
)
from trustboot.errors import ConfigError
from trustboot.fsutil import atomic_write, ensure_private_dir, locked
from trustboot.keys import keyfile
from trustboot.secrets import PassphraseSource, constant

STEPS = ("stable", "begun", "promoted")


@dataclass(frozen=True)
class RotationStatus:
    step: str  # stable | begun | promoted
    active_root: str
    active_issuing: str
    next_root: str | None  # during "begun"
    previous_root: str | None  # during "promoted"
    description: str
    next_step: str  # what to do next, with the command
    # what the promote step accepted as proof (this rotation, or the last one when stable)
    evidence: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "active_root": self.active_root,
                "active_issuing": self.active_issuing, "next_root": self.next_root,
                "previous_root": self.previous_root, "description": self.description,
                "next": self.next_step, "evidence": list(self.evidence)}


@dataclass
class StepResult:
    step: str  # begin | promote | retire; issuing (rotate_issuing)
    already_done: bool  # the step had completed before (a re-run after a kill, or twice)
    status: RotationStatus
    created: list[IssuedEntry] = field(default_factory=list)
    renewed: list[IssuedEntry] = field(default_factory=list)
    retired: list[IssuedEntry] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)


def _pki(ca: CertificateAuthority) -> str:
    return str(ca.path)


def status(ca: CertificateAuthority) -> RotationStatus:
    """Where the CA stands in a root rotation and what comes next."""
    rotation = ca.state.rotation
    root = ca.active_entry("root").sha256
    issuing = ca.active_entry("issuing").sha256
    pki = _pki(ca)
    if not rotation:
        last = ca.state.last_rotation or {}
        return RotationStatus(
            "stable", root, issuing, None, None,
            "no root rotation in progress: one root, trusted by firmware and signing",
            f"nothing to do; to replace the root: trustboot ca rotate root begin --pki {pki}",
            tuple(evidence_json(e) for e in last.get("evidence") or []))
    if rotation.get("step") == "begun":
        return RotationStatus(
            "begun", root, issuing, rotation.get("new_root"), None,
            "the next root and its issuing CA exist beside the active ones; the active chain "
            "still signs; firmware built now trusts both roots",
            "build and deploy firmware that trusts both roots (`trustboot ipxe build --pki "
            f"{pki} ...` trusts both during a rotation; or `trustboot ca export --pki {pki} "
            "--out DIR` and `trustboot ipxe build --trust DIR/root.pem --trust "
            "DIR/root-next.pem ...`); once the fleet runs it: trustboot ca rotate root "
            f"promote --pki {pki} --build-manifest FIRMWARE/manifest.json or --from-origin "
            "URL (with --audit-report FILE per segment; or --confirm-fleet)")
    return RotationStatus(
        "promoted", root, issuing, None, rotation.get("old_root"),
        "the new chain signs; firmware still trusts the previous root too",
        "re-sign and publish the live releases with the new chain, build firmware that "
        "trusts only the new root, then: trustboot ca rotate root retire "
        f"--pki {pki}", tuple(evidence_json(e) for e in rotation.get("evidence") or []))


def _refuse(ca: CertificateAuthority, command: str) -> ConfigError:
    st = status(ca)
    return ConfigError(
        f"`ca rotate root {command}` cannot run now: the root rotation of {ca.path} is at "
        f"step {st.step!r} ({st.description})",
        hint=f"next: {st.next_step}")


def _check_file_keys(ca: CertificateAuthority) -> None:
    if ca.config.get("pkcs11"):
        raise ca.token_unsupported()


def _unlock(ca: CertificateAuthority, entry: IssuedEntry,
            passphrases: PassphraseSource) -> tuple[PrivateKey, bytes]:
    """The key of a CA certificate and the passphrase that opened it (the new CA keys of a
    rotation are encrypted with the same passphrase: one secret for the CA's keys)."""
    secret = passphrases("the CA keys")
    return ca.load_ca_key(entry, constant(secret)), secret


def _subject_cn(ca: CertificateAuthority, role: str) -> str:
    """``<name> Root CA 2``, ``<name> Issuing CA 3``: every CA certificate gets its own
    subject, since iPXE and OpenSSL find issuers by name (see :func:`numbered_cn`)."""
    kind = "Root" if role == "root" else "Issuing"
    name = ca.config.get("common_name", "trustboot")
    taken = {part for e in ca.entries for part in e.subject.split(",")}
    n = sum(1 for e in ca.entries if e.profile == role) + 1
    while f"CN={numbered_cn(name, kind, n)}" in taken:
        n += 1
    return numbered_cn(name, kind, n)


def numbered_cn(name: str, kind: str, n: int) -> str:
    """The common name of the ``n``-th ``kind`` (Root, Issuing) CA certificate of the CA
    called ``name``: ``<name> <kind> CA <n>``, at most MAX_COMMON_NAME bytes of UTF-8
    (the limit the certificate builder enforces).

    ``ca init`` limits a name to MAX_CA_NAME characters, but a CA made by an older
    trustboot may have one of up to 53 (and a name with letters outside ASCII takes more
    bytes than characters): where the name does not fit, it is cut, on a character
    boundary (never inside a combining sequence, and without the spaces the cut leaves at
    its end), and the suffix is kept whole, so `<name> Issuing CA 2` of a 53-character
    name becomes `<its first 51 characters> Issuing CA 2`. Rotation is a security
    operation, so it works for such a CA rather than refusing. Each name stays unique: it
    ends with its number after " CA ", which no other n gives."""
    suffix = f" {kind} CA {n}"
    room = MAX_COMMON_NAME - len(suffix.encode())
    if len(name.encode()) > room:
        cut = used = 0
        while cut < len(name) and used + len(name[cut].encode()) <= room:
            used += len(name[cut].encode())
            cut += 1
        while cut > 0 and unicodedata.combining(name[cut]):
            cut -= 1  # a base character and its marks stay together
        name = name[:cut].rstrip()
    return f"{name}{suffix}"


def _store_ca(ca: CertificateAuthority, name: str, role: str, cert: x509.Certificate,
              key: PrivateKey, secret: bytes, issuer_sha256: str, now: dt.datetime,
              ) -> IssuedEntry:
    """Write a new CA certificate and its encrypted key (under the lock, before the
    index commit that makes them part of the CA)."""
    key_rel = _key_rel(cert.serial_number)
    ensure_private_dir(ca.path / "private" / "keys")
    _set_aside_leftovers(ca.path, [key_rel], now)
    keyfile.write_key(ca.path / key_rel, key, secret)
    atomic_write(ca.path / _cert_rel(cert.serial_number), pem(cert))
    entry = _entry(name, role, cert, key_rel, ca.path, issuer_sha256)
    ca.entries.append(entry)
    return entry


# ---- issuing CA ------------------------------------------------------------------------


def rotate_issuing(ca: CertificateAuthority, passphrases: PassphraseSource, *,
                   days: int | None = None, key_type: str | None = None,
                   now: dt.datetime | None = None) -> StepResult:
    """A new issuing CA under the active root; it issues from now on (and signs the CRL).
    The previous one stays valid for the leaves it issued. ``created``: the new one.

    When the last change of the CA is a rotation whose run was killed after its commit
    (see :func:`unfinished_issuing_rotation`) and some of its work is missing, that work
    is finished instead (the previous CA's CRL, crl.pem, the log entry, the views) and no
    other issuing CA is made: ``already_done``,
    ``created`` the one the killed run made. Run it again for another rotation."""
    now = now or utcnow()
    _check_file_keys(ca)
    if ca.state.rotation:
        raise _refuse_issuing(ca)
    # a mark with nothing owed is one whose clearing (_done's write) failed: finishing
    # it would answer "finished" and make no CA, on a run that may follow a key
    # compromise; this run rotates, and its commit replaces the mark
    if unfinished_issuing_rotation(ca) is not None and _rotation_work_owed(ca, now):
        result = _resume(ca, "issuing", now, passphrases=passphrases)
        result.created.append(ca.active_entry("issuing"))
        return result
    days = days if days is not None else DEFAULT_DAYS["issuing"]
    _check_days(days, "issuing")
    spec = profiles.parse_key_type(key_type or ca.config.get("issuing_key_type", "rsa-4096"),
                                   for_ca=True)
    root = ca.active_entry("root")
    root_key, secret = _unlock(ca, root, passphrases)
    # the previous issuing CA signs its own CRL from now on (crls/SERIAL.pem)
    previous = ca.active_entry("issuing")
    previous_key = _previous_key(ca, previous, secret)
    new_key = spec.generate()
    with locked(ca.path / ".lock"):
        ca._begin_write(now)
        if ca.state.rotation:
            raise _refuse_issuing(ca)
        ca._check_still_active(root)
        ca._check_still_active(previous)
        cert = profiles.build_certificate(
            profile="issuing", subject_cn=_subject_cn(ca, "issuing"),
            public_key=new_key.public_key(), issuer_cert=root.load_cert(), issuer_key=root_key,
            serial=ca._new_serial(), now=now, days=days, opts=ca.options)
        entry = _store_ca(ca, ISSUING_NAME, "issuing", cert, new_key, secret, root.sha256, now)
        ca.state.active["issuing"] = entry.sha256
        ca.crl_number += 1
        # marked unfinished until its CRLs and log entry are written: only a run killed
        # in between is finished by the next one (a CRL missing or damaged later is not)
        ca._commit(now, ca._record("rotate-issuing", now, issuing=entry.sha256,
                                   previous=previous.sha256, serial=f"{entry.serial:x}",
                                   key_type=spec.label),
                   unfinished={"op": "rotate-issuing", "issuing": entry.sha256})
        ca.keep_previous_crl(previous, previous_key, now, number=ca.crl_number)
        ca._write_crl(new_key, now, days=30, number=ca.crl_number)
        ca._append_log()
        ca._done()
    return StepResult("issuing", False, status(ca), created=[entry])


def unfinished_issuing_rotation(ca: CertificateAuthority) -> IssuedEntry | None:
    """The issuing CA that the CA's last change, a `ca rotate issuing`, made active when
    that run was killed after its index commit and before the end of its work (the
    previous CA's CRL, crl.pem, the log entry): the index still carries the mark that
    run set in its commit and clears as its last step. None otherwise: a completed
    rotation whose CRLs went missing or were damaged later is for `ca check` and `ca
    crl`, and a re-run rotates again."""
    mark = ca.state.unfinished or {}
    active = ca.active_entry("issuing")
    if mark.get("op") != "rotate-issuing" or mark.get("issuing") != active.sha256:
        return None
    return active


def _rotation_work_owed(ca: CertificateAuthority, now: dt.datetime) -> bool:
    """Whether any of the work a rotation does after its commit (what _resume finishes) is
    missing: the log entries its change owes, crl.pem signed by the active issuing CA, a
    previous issuing CA's CRL in crls/, current views."""
    from trustboot.ca import oplog

    log = ca.state.log
    return bool((log is not None and oplog.count_lines(ca.path / "log.jsonl") < log["seq"])
                or ca._check_crl() or ca.previous_issuers_without_crl()
                or ca._missing_previous_crls() or ca._stale_views(now))


def _previous_key(ca: CertificateAuthority, issuing: IssuedEntry,
                  secret: bytes) -> PrivateKey | None:
    """The key of the issuing CA a rotation makes a previous one (to sign its CRL in
    crls/), None when its key file is gone from the CA home."""
    if issuing.key_file is None or not issuing.key_path.exists():
        return None
    return ca.load_ca_key(issuing, constant(secret))


def _refuse_issuing(ca: CertificateAuthority) -> ConfigError:
    st = status(ca)
    return ConfigError(
        f"a root rotation is in progress in {ca.path} (step {st.step!r}): the issuing CA is "
        "rotated with it",
        hint=f"finish the root rotation first; next: {st.next_step}")


def retire_issuing(ca: CertificateAuthority, serial: int, *,
                   now: dt.datetime | None = None) -> IssuedEntry:
    """Retire a previous issuing CA: its chain leaves trust and exports; refused while a
    current leaf still depends on it (renew those first)."""
    now = now or utcnow()
    with locked(ca.path / ".lock"):
        ca._begin_write(now)
        entry = ca.find_serial(serial)
        if entry is None or entry.profile != "issuing":
            raise ConfigError(f"no issuing CA with serial {serial:x} in {ca.path}",
                              hint=f"see: trustboot ca list --all --pki {ca.path}")
        if entry.sha256 == ca.active_entry("issuing").sha256:
            raise ConfigError(f"issuing CA {serial:x} is the active one",
                              hint="rotate it first: trustboot ca rotate issuing")
        if entry.status == "retired":
            return entry
        names = {e.name for e in ca.entries if e.issuer_sha256 == entry.sha256}
        users = sorted(n for n in names if (c := ca.current(n, now)) is not None
                       and c.issuer_sha256 == entry.sha256)
        if users:
            raise ConfigError(
                f"issuing CA {serial:x} still issued the current certificate of "
                f"{', '.join(users)}",
                hint="renew them under the active issuing CA first: "
                + "; ".join(f"trustboot ca renew {n}" for n in users))
        entry.status = "retired"
        entry.retired_at = now.isoformat()
        ca._commit(now, ca._record("retire-issuing", now, issuing=entry.sha256,
                                   serial=f"{entry.serial:x}"))
        ca._append_log()
    return entry


# ---- root --------------------------------------------------------------------------------


def begin_root(ca: CertificateAuthority, passphrases: PassphraseSource, *,
               root_days: int | None = None, issuing_days: int | None = None,
               key_type: str | None = None, issuing_key_type: str | None = None,
               now: dt.datetime | None = None) -> StepResult:
    """Step 1: create the next root and an issuing CA under it, beside the active ones."""
    now = now or utcnow()
    _check_file_keys(ca)
    step = (ca.state.rotation or {}).get("step")
    if step == "begun":
        return _resume(ca, "begin", now)
    if step is not None:
        raise _refuse(ca, "begin")
    root_days = root_days if root_days is not None else DEFAULT_DAYS["root"]
    issuing_days = issuing_days if issuing_days is not None else DEFAULT_DAYS["issuing"]
    _check_days(root_days, "root")
    _check_days(issuing_days, "issuing")
    if issuing_days >= root_days:
        raise ConfigError(f"the issuing CA ({issuing_days} days) must expire before the root "
                          f"({root_days} days)", hint="shorten --issuing-days")
    root_spec = profiles.parse_key_type(key_type or ca.config.get("root_key_type", "rsa-4096"),
                                        for_ca=True)
    issuing_spec = profiles.parse_key_type(
        issuing_key_type or key_type or ca.config.get("issuing_key_type", "rsa-4096"),
        for_ca=True)
    # The active root's key proves the operator holds this CA; the new keys get its
    # passphrase.
    _root_key, secret = _unlock(ca, ca.active_entry("root"), passphrases)
    root_key, issuing_key = root_spec.generate(), issuing_spec.generate()
    with locked(ca.path / ".lock"):
        ca._begin_write(now)
        step = (ca.state.rotation or {}).get("step")
        if step == "begun":  # a concurrent run did it
            return _resume(ca, "begin", now, locked_already=True)
        if step is not None:
            raise _refuse(ca, "begin")
        old_root = ca.active_entry("root")
        root_cert = profiles.build_certificate(
            profile="root", subject_cn=_subject_cn(ca, "root"),
            public_key=root_key.public_key(), issuer_cert=None, issuer_key=root_key,
            serial=ca._new_serial(), now=now, days=root_days, opts=ca.options)
        root = _store_ca(ca, ROOT_NAME, "root", root_cert, root_key, secret,
                         fingerprint(root_cert), now)
        issuing_cert = profiles.build_certificate(
            profile="issuing", subject_cn=_subject_cn(ca, "issuing"),
            public_key=issuing_key.public_key(), issuer_cert=root_cert, issuer_key=root_key,
            serial=ca._new_serial(), now=now, days=issuing_days, opts=ca.options)
        issuing = _store_ca(ca, ISSUING_NAME, "issuing", issuing_cert, issuing_key, secret,
                            root.sha256, now)
        ca.state.rotation = {"step": "begun", "old_root": old_root.sha256,
                             "old_issuing": ca.active_entry("issuing").sha256,
                             "new_root": root.sha256, "new_issuing": issuing.sha256,
                             "begun_at": now.isoformat()}
        ca._commit(now, ca._record("rotate-root-begin", now, old_root=old_root.sha256,
                                   new_root=root.sha256, new_issuing=issuing.sha256,
                                   key_type=root_spec.label))
        ca._append_log()
        return StepResult("begin", False, status(ca), created=[root, issuing])


def promote_root(ca: CertificateAuthority, passphrases: PassphraseSource, *,
                 confirm_fleet: bool = False, manifests: Sequence[Path] = (),
                 evidence: Sequence[FleetEvidence] = (), audit_reports: Sequence[Path] = (),
                 now: dt.datetime | None = None) -> StepResult:
    """Step 2: the next root becomes the active one; every current leaf is certified
    again (same key) by the new issuing CA, so signing switches to the new chain.

    Refused without evidence that the fleet's firmware trusts the next root
    (:mod:`trustboot.ca.evidence`): build manifests (``manifests``, files), firmware
    evidence gathered elsewhere (``evidence``, e.g. :func:`evidence.origin_evidence` for
    the next root, see :func:`status`), audit reports of segments checked against those
    builds (``audit_reports``), or ``confirm_fleet``.
    """
    now = now or utcnow()
    _check_file_keys(ca)
    step = (ca.state.rotation or {}).get("step")
    if step == "promoted":
        return _resume(ca, "promote", now, passphrases=passphrases)
    if step != "begun":
        raise _refuse(ca, "promote")
    rotation = dict(ca.state.rotation or {})
    new_root = rotation["new_root"]
    for e in evidence:
        if e.root_sha256 != new_root:
            raise ConfigError(f"evidence from {e.source} is about root {e.root_sha256}, not "
                              f"the next root {new_root}",
                              hint="gather it again for the root `ca status` names")
    found = [evidence_mod.build_manifest_evidence(p, new_root) for p in manifests]
    found += list(evidence)
    firmware = list(found)  # what the audits are compared against
    found += [evidence_mod.audit_evidence(p, new_root, firmware) for p in audit_reports]
    if not found and not confirm_fleet:
        raise ConfigError(
            "promoting the next root needs evidence that the fleet's firmware trusts it: "
            "machines whose firmware only trusts the current root stop booting new "
            "signatures",
            hint="pass --build-manifest FILE (the manifest.json of the deployed firmware's "
            "`trustboot ipxe build`, or its release.json) or --from-origin URL (the live "
            "release's build record), with --audit-report FILE for each segment; or, if you "
            "checked it another way, --confirm-fleet")
    if confirm_fleet and not found:
        found = [evidence_mod.operator_evidence(new_root)]
    records = [e.to_json() for e in found]
    new_issuing = ca.by_sha256(rotation["new_issuing"])
    if new_issuing is None:
        raise ConfigError(f"the CA in {ca.path} is damaged: the next issuing CA is missing",
                          hint="run `trustboot ca check` and restore from backup")
    issuing_key, secret = _unlock(ca, new_issuing, passphrases)
    old_issuing = ca.active_entry("issuing")
    old_issuing_key = _previous_key(ca, old_issuing, secret)
    # A root CRL in use (nginx's ssl_crl for the publishers' chain) is signed again by the
    # next root as it becomes active: left alone it would name the previous root, and
    # `ca export` would refuse it until `ca crl --root`.
    new_root_entry = ca.by_sha256(new_root)
    root_key = (ca.load_ca_key(new_root_entry, constant(secret))
                if new_root_entry is not None and ca.has_root_crl() else None)
    with locked(ca.path / ".lock"):
        ca._begin_write(now)
        step = (ca.state.rotation or {}).get("step")
        if step == "promoted":
            return _resume(ca, "promote", now, locked_already=True)
        if step != "begun":
            raise _refuse(ca, "promote")
        ca._check_still_active(new_issuing, role="next")
        ca._check_still_active(old_issuing)
        renewed = []
        for name, entry in _current_leaves(ca, now):
            if entry.issuer_sha256 == new_issuing.sha256:
                continue
            # Keep each certificate's end of life to the second: a short-lived signer
            # stays short-lived (whole days from now ended up to a day later).
            new, _cert = ca._add_leaf(
                name, entry.profile, entry.load_cert().public_key(),  # type: ignore[arg-type]
                issuing_key, now=now, days=1,
                sans=[profiles.parse_san(s) for s in entry.sans], new_key_pem=None,
                key_rel=entry.key_file, issuing=new_issuing, not_after=entry.not_after_dt())
            renewed.append(new)
        ca.state.active = {"root": rotation["new_root"], "issuing": new_issuing.sha256}
        ca.state.rotation = rotation | {"step": "promoted", "promoted_at": now.isoformat(),
                                        "evidence": records}
        ca.crl_number += 1
        issuing_number = ca.crl_number
        logged = [ca._record("rotate-root-promote", now, new_root=rotation["new_root"],
                             evidence=[_log_record(e) for e in records],
                             renewed=[f"{e.name}:{e.serial:x}" for e in renewed])]
        if root_key is not None:
            ca.crl_number += 1
            logged.append(ca._record("crl", now, crl_number=ca.crl_number, issuer="root"))
        ca._commit(now, *logged)
        ca.keep_previous_crl(old_issuing, old_issuing_key, now, number=issuing_number)
        ca._write_crl(issuing_key, now, days=30, number=issuing_number)
        if root_key is not None:
            ca._write_crl(root_key, now, days=ROOT_CRL_DAYS, number=ca.crl_number,
                          issuer=ca.active_entry("root"))
        ca._append_log()
        return StepResult("promote", False, status(ca), renewed=renewed, evidence=records)


def _log_record(record: dict[str, Any]) -> dict[str, Any]:
    """What the op log keeps of one evidence: kind, source, fingerprints."""
    return {"kind": record["kind"], "source": record["source"],
            "release": record.get("release"), "segment": record.get("segment"),
            "trust": record.get("trust", []),
            "firmware_sha256": sorted({f["sha256"] for f in record.get("firmware", [])})}


def retire_root(ca: CertificateAuthority, *, now: dt.datetime | None = None) -> StepResult:
    """Step 3: the previous root and its issuing CAs are retired (out of trust and
    exports; kept in the pki as an archive). Leaves under them no longer sign."""
    now = now or utcnow()
    with locked(ca.path / ".lock"):
        ca._begin_write(now)
        rotation = ca.state.rotation
        last = ca.state.last_rotation or {}
        if not rotation and last.get("step") == "retired":
            return _resume(ca, "retire", now, locked_already=True)
        if not rotation or rotation.get("step") != "promoted":
            raise _refuse(ca, "retire")
        old = ca.by_sha256(rotation["old_root"])
        retired = []
        for e in ca.entries:
            if e is old or (e.profile == "issuing" and old is not None
                            and e.issuer_sha256 == old.sha256):
                if e.status != "retired":
                    e.status = "retired"
                    e.retired_at = now.isoformat()
                    retired.append(e)
        ca.state.last_rotation = rotation | {"step": "retired", "retired_at": now.isoformat()}
        ca.state.rotation = None
        ca._commit(now, ca._record("rotate-root-retire", now, old_root=rotation["old_root"],
                                   retired=[e.sha256 for e in retired]))
        ca._append_log()
        return StepResult("retire", False, status(ca), retired=retired)


def _resume(ca: CertificateAuthority, step: str, now: dt.datetime, *,
            locked_already: bool = False,
            passphrases: PassphraseSource | None = None) -> StepResult:
    """A step that already happened: finish what a killed run left (views, the log entry
    it owes; with ``passphrases`` the CRL of the new issuing CA, the previous issuing CA's
    CRL in crls/, and root-crl.pem signed again by the new root) and report it done."""
    key = root_key = None
    issuing, root = ca.active_entry("issuing"), ca.active_entry("root")
    previous_keys: dict[str, PrivateKey] = {}
    if passphrases is not None and not locked_already:
        stale, stale_root = bool(ca._check_crl()), _root_crl_stale(ca)
        unwritten = ca.previous_issuers_without_crl()
        if stale or stale_root or unwritten:
            secret = constant(passphrases("the CA keys"))
            key = ca.load_ca_key(issuing, secret) if stale else None
            root_key = ca.load_ca_key(root, secret) if stale_root else None
            previous_keys = {e.sha256: ca.load_ca_key(e, secret) for e in unwritten}
    if locked_already:
        ca._refresh_views(now)
        return StepResult(step, True, status(ca))
    with locked(ca.path / ".lock"):
        ca._begin_write(now)
        for unlocked, loaded in ((issuing, key), (root, root_key)):
            if loaded is not None:
                ca._check_still_active(unlocked)
        writes: list[tuple[PrivateKey, int, IssuedEntry | None, int]] = []
        logged = []
        if key is not None and ca._check_crl():
            ca.crl_number += 1
            writes.append((key, ca.crl_number, None, 30))
            logged.append(ca._record("crl", now, crl_number=ca.crl_number))
        # the previous issuing CA's CRL, which promote and rotate issuing write after
        # their commit: with crl.pem's number when that is written again too (one "crl"
        # record); one whose key is gone keeps the CRL it signed (crl.pem, still its own
        # if it revoked leaves), copied before crl.pem is rewritten
        keyless = [e for _path, e in ca._missing_previous_crls()
                   if e.sha256 not in previous_keys]
        unwritten = [e for e in ca.previous_issuers_without_crl() if e.sha256 in previous_keys]
        if unwritten:
            if not logged:
                ca.crl_number += 1
                logged.append(ca._record("crl", now, crl_number=ca.crl_number))
            writes += [(previous_keys[e.sha256], ca.crl_number, e, 30) for e in unwritten]
        if root_key is not None and _root_crl_stale(ca):
            ca.crl_number += 1
            writes.append((root_key, ca.crl_number, ca.active_entry("root"), ROOT_CRL_DAYS))
            logged.append(ca._record("crl", now, crl_number=ca.crl_number, issuer="root"))
        for e in keyless:
            ca.keep_previous_crl(e, None, now, number=ca.crl_number)
        if writes:
            # a killed rotate issuing stays marked unfinished until this run is done too
            ca._commit(now, *logged, unfinished=ca.state.unfinished)
            for signing_key, number, issuer, days in writes:
                ca._write_crl(signing_key, now, days=days, number=number, issuer=issuer)
            ca._append_log()
        ca._done()
    return StepResult(step, True, status(ca))


def _root_crl_stale(ca: CertificateAuthority) -> bool:
    """root-crl.pem is there but not the active root's (a promote killed before it was
    signed again). One that cannot be read is left to `ca check`, which names it."""
    if not ca.has_root_crl():
        return False
    try:
        return bool(ca._crl_problems(ca.path / ROOT_CRL, ca.active_entry("root"))[1])
    except ConfigError:
        return False


def _current_leaves(ca: CertificateAuthority, now: dt.datetime,
                    ) -> list[tuple[str, IssuedEntry]]:
    names = dict.fromkeys(e.name for e in ca.entries if e.profile in profiles.LEAF_PROFILES)
    found = []
    for name in names:
        entry = ca.current(name, now)
        if entry is not None:
            found.append((name, entry))
    return found
