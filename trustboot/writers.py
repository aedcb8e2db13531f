"""Who, besides root and this user, can change a file a run trusts.

A release signs, publishes and embeds what its recipe names: the recipe itself, kernels,
initrds, prebuilt firmware, the iPXE tree it builds, extra trusted roots, the certificates
it reads. Another local user who can write one of them, or rename it away through a
directory above it, chooses what the release signs.

Mode bits alone would refuse every user-private-group host (umask 002, the default for
such users on Fedora and RHEL: group-writable, but the group is the user's own), so group
write is harmless when the group is our user-private group: our primary group, named
after us (as useradd makes one), with no one else on its member list and no other user
the passwd database lists with it as their primary group. Any other group counts as
foreign, even one whose members seem to be only us: with LDAP or SSSD the passwd
database need not list every user, so a group's users cannot be enumerated. That holds
for a shared primary group too (every LDAP user's "users"), which is why the name must
be ours: the listing is trusted only for a group that is ours by convention as well.
POSIX ACL entries count the same way, each named user or group entry that can write
through the ACL's mask.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from trustboot.errors import ConfigError
from trustboot.fsutil import dirs_above

UNSAFE_OPTION = "--unsafe-shared-inputs"
UNSAFE_ENV = "TRUSTBOOT_UNSAFE_SHARED_INPUTS"
UNSAFE_HELP = ("Accept recipe inputs (images, firmware, the iPXE tree, certificates, the "
               "recipe) that users other than root and you can change: they then choose "
               "what the release signs. Only when every such user is trusted as you are; "
               "warns on every run.")
UNSAFE_WARNING = ("--unsafe-shared-inputs: recipe inputs other users can change are "
                  "accepted; whoever can write them chooses what this release signs")

_ACL_XATTR = "system.posix_acl_access"
_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK = 0x02, 0x04, 0x08, 0x10
_ACL_WRITE = 0x02
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
# Enough for the iPXE tree's src/ (about 2,000 entries) many times over; a tree larger
# than this is refused rather than walked for minutes.
MAX_TREE_ENTRIES = 200_000


@functools.cache
def _members(gid: int) -> frozenset[int] | None:
    """The uids in group ``gid`` as far as the databases list them (its member list and
    the users whose primary group it is), or None when the group database does not know
    the group."""
    try:
        names = grp.getgrgid(gid).gr_mem
    except KeyError:
        return None
    uids = {pw.pw_uid for pw in pwd.getpwall() if pw.pw_gid == gid}
    for name in names:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            uids.add(-1)  # a member the passwd database cannot name: someone else
    return frozenset(uids)


def _private_gid() -> int | None:
    """Our user-private group: our primary group, if it is named after us."""
    try:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_gid if grp.getgrgid(me.pw_gid).gr_name == me.pw_name else None
    except KeyError:
        return None


def _group_writers(gid: int, trusted: frozenset[int]) -> list[str]:
    members = _members(gid)
    if members is None:
        return [f"group {gid} (not in the group database: its members are unknown)"]
    others = sorted(members - trusted)
    name = grp.getgrgid(gid).gr_name
    if others:
        shown = ", ".join(_user(u) for u in others[:5]) + (", ..." if len(others) > 5
                                                           else "")
        return [f"group {name} ({shown})"]
    if gid != _private_gid():
        return [f"group {name} (not your own user-private group: its users cannot all "
                "be listed)"]
    return []


def _user(uid: int) -> str:
    if uid < 0:
        return "a member without an account"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _acl(path: str) -> list[tuple[int, int, int]] | None:
    """The access ACL's (tag, permissions, id) entries of what ``path`` leads to (as the
    stat the callers pass), or None without one; OSError when it cannot be read."""
    try:
        raw = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    body = raw[_ACL_HEADER.size:]
    return [_ACL_ENTRY.unpack_from(body, i)
            for i in range(0, len(body) - _ACL_ENTRY.size + 1, _ACL_ENTRY.size)]


def writers(path: str, st: os.stat_result, *, through: bool = False) -> list[str]:
    """Who other than root and us can change ``path`` (stat ``st``, not a link): write a
    file, or add, remove and rename a directory's entries. With ``through`` (a directory
    on the way to what is checked, not the thing itself) a sticky directory's group and
    others do not count: there they can remove only their own entries, and the next
    entry on the way is checked to be ours."""
    out: list[str] = []
    if st.st_uid not in (0, os.geteuid()):
        out.append(f"its owner {_user(st.st_uid)}")  # who can chmod it at will
    if through and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return out
    return out + mode_writers(path, st)


def mode_writers(path: str, st: os.stat_result) -> list[str]:
    """Who other than root and us can write ``path`` through its group, its ACL entries
    or its mode for others (its owner aside): [] when its mode bits for group and others
    allow no write, or only our own user-private group can."""
    if not st.st_mode & 0o022:
        return []
    trusted = frozenset((0, os.geteuid()))
    out: list[str] = []
    try:
        acl = _acl(path) if st.st_mode & stat.S_IWGRP else None
    except OSError as exc:
        return [f"anyone its unreadable ACL names ({exc.strerror})"]
    if acl is None:
        if st.st_mode & stat.S_IWGRP:
            out += _group_writers(st.st_gid, trusted)
    else:
        mask = next((perm for tag, perm, _ in acl if tag == _ACL_MASK), 0o7)
        for tag, perm, qid in acl:
            if not perm & mask & _ACL_WRITE:
                continue
            if tag == _ACL_USER and qid not in trusted:
                out.append(f"{_user(qid)} (an ACL entry)")
            elif tag == _ACL_GROUP_OBJ:
                out += _group_writers(st.st_gid, trusted)
            elif tag == _ACL_GROUP:
                out += [f"{w} (an ACL entry)" for w in _group_writers(qid, trusted)]
    if st.st_mode & stat.S_IWOTH:
        out.append("every user")
    return out


def _refuse(what: str, path: Path, culprit: Path, who: list[str], *, above: bool
            ) -> ConfigError:
    where = f"{culprit} above it" if above else (
        "it" if culprit == path else f"{culprit} in it")
    effect = ("put another file in its place" if above
              else "choose what is signed and published")
    return ConfigError(
        f"{what} {path}: {where} can be changed by {'; '.join(who)}, not only by root and "
        f"you: they can {effect}",
        hint=f"make {culprit} writable only by you (chmod go-w, chown), or move it to a "
             f"directory only you can change; if everyone named is trusted as you are: "
             f"{UNSAFE_OPTION}")


def check_trusted(path: Path, what: str, *, tree: bool = False) -> None:
    """Refuse ``path`` (ConfigError) when a user other than root and us can change it,
    any directory it is looked up through (links followed, as the kernel does), or, with
    ``tree``, anything in the directory tree under it (links in it are not followed:
    their own directory is checked, and whoever reads the tree judges where they lead)."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    for parent, st in dirs_above(path, what, lookup_first=True):
        who = writers(str(parent), st, through=True)
        if who:
            raise _refuse(what, path, parent, who, above=True)
    st = _stat(real, path, what)
    who = writers(str(real), st)
    if who:
        raise _refuse(what, path, path, who, above=False)
    if tree and stat.S_ISDIR(st.st_mode):
        _check_tree(real, path, what)


def _check_tree(top: Path, shown: Path, what: str) -> None:
    count = 0
    for dirpath, dirnames, filenames in os.walk(top, onerror=_walk_error(shown, what)):
        for name in (*dirnames, *filenames):
            count += 1
            if count > MAX_TREE_ENTRIES:
                raise ConfigError(f"{what} {shown}: more than {MAX_TREE_ENTRIES} entries to "
                                  "check", hint="point it at the iPXE tree itself")
            entry = os.path.join(dirpath, name)
            try:
                st = os.lstat(entry)
            except FileNotFoundError:
                continue  # gone meanwhile: what reads the tree reports it
            if stat.S_ISLNK(st.st_mode):
                continue  # a link cannot be written; its directory is checked
            who = writers(entry, st)
            if who:
                raise _refuse(what, shown, Path(entry), who, above=False)


def _walk_error(shown: Path, what: str) -> Callable[[OSError], None]:
    def fail(exc: OSError) -> None:
        raise ConfigError(f"{what} {shown}: cannot check {exc.filename}: {exc.strerror}",
                          hint="check its permissions") from None
    return fail


def _stat(p: Path, shown: Path, what: str) -> os.stat_result:
    try:
        return os.stat(p)
    except OSError as exc:
        raise ConfigError(f"{what} {shown}: cannot check {p}: {exc.strerror}",
                          hint="check the path and its permissions") from None
