"""Recipe inputs other users can change are refused (trustboot.writers): by owner, group
members (the user-private-group case accepted), others, POSIX ACL entries, a directory on
the way, a link on the way, and anything in a tree.

Most cases give a file to another user or group, which needs root (CI runs as root);
they skip with that reason otherwise. The other user is `nobody` (uid 65534), the group
with a foreign member `nogroup` (nobody's primary group), as Debian has them.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import struct
from pathlib import Path

import pytest

from trustboot import writers
from trustboot.errors import ConfigError

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="giving a file to another user or group needs root")


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' in the user database")
    if pw.pw_uid in (0, os.geteuid()):
        pytest.skip("'nobody' is this user")
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private directory whose parents pass (pytest's base is 0700, ours)."""
    d = tmp_path / "recipe"
    d.mkdir(mode=0o700)
    writers._members.cache_clear()
    return d


def _file(d: Path, name: str = "vmlinuz", mode: int = 0o644) -> Path:
    p = d / name
    p.write_bytes(b"kernel")
    p.chmod(mode)
    return p


def _refused(path: Path, *, tree: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        writers.check_trusted(path, "entries.linux.kernel", tree=tree)
    assert writers.UNSAFE_OPTION in (info.value.hint or "")
    return info.value


def test_a_private_file_passes(home: Path) -> None:
    writers.check_trusted(_file(home), "kernel")


def test_a_world_writable_file_is_refused(home: Path) -> None:
    p = _file(home, mode=0o646)
    err = _refused(p)
    assert str(p) in err.message and "every user" in err.message


def test_a_world_writable_directory_above_is_refused(home: Path) -> None:
    sub = home / "images"
    sub.mkdir()
    p = _file(sub)
    sub.chmod(0o777)
    err = _refused(p)
    assert f"{sub} above it" in err.message and "put another file in its place" in err.message


def test_a_sticky_directory_above_passes_when_the_entry_is_ours(home: Path) -> None:
    sub = home / "shared"
    sub.mkdir()
    p = _file(sub)
    sub.chmod(0o1777)  # as /tmp: others can remove only their own entries
    writers.check_trusted(p, "kernel")


@needs_root
def test_a_sticky_directory_does_not_excuse_an_entry_of_another_user(home: Path) -> None:
    uid, _ = _nobody()
    sub = home / "shared"
    sub.mkdir()
    sub.chmod(0o1777)
    theirs = sub / "images"
    theirs.mkdir()
    p = _file(theirs)
    os.chown(theirs, uid, -1)
    err = _refused(p)
    assert f"{theirs} above it" in err.message and "nobody" in err.message


@needs_root
def test_a_file_owned_by_another_user_is_refused(home: Path) -> None:
    uid, _ = _nobody()
    p = _file(home)
    os.chown(p, uid, -1)
    err = _refused(p)
    assert "its owner nobody" in err.message


@needs_root
def test_group_write_counts_when_the_group_has_another_member(home: Path) -> None:
    _, gid = _nobody()  # nogroup: nobody's primary group
    p = _file(home, mode=0o664)
    os.chown(p, -1, gid)
    err = _refused(p)
    assert f"group {grp.getgrgid(gid).gr_name} (" in err.message and "nobody" in err.message
    # the same through a directory above
    p.chmod(0o644)
    os.chown(home, -1, gid)
    home.chmod(0o770)
    err = _refused(p)
    assert f"{home} above it" in err.message


def _skip_unless_in_a_user_private_group() -> None:
    """New files get this user's primary group: the cases below need it to hold no one
    else (root's group, as CI runs, does)."""
    gid = os.getegid()
    members = writers._members(gid)
    me = pwd.getpwuid(os.geteuid())
    if members is None or members - {0, os.geteuid()} or gid != me.pw_gid or \
            grp.getgrgid(gid).gr_name != me.pw_name:
        pytest.skip(f"this user's group {gid} is not a user-private group")


def test_group_write_of_a_group_of_only_root_and_us_passes(home: Path) -> None:
    """The user-private-group case (umask 002): group-writable, but nobody else is in it."""
    _skip_unless_in_a_user_private_group()
    p = _file(home, mode=0o664)
    writers.check_trusted(p, "kernel")
    home.chmod(0o770)
    writers.check_trusted(p, "kernel")


@needs_root
def test_a_group_other_than_ours_counts_even_with_no_member_listed(home: Path) -> None:
    """With LDAP or SSSD the passwd database need not list every user whose primary
    group it is: only our own primary group is taken at its listing's word."""
    mine = pwd.getpwuid(os.geteuid()).pw_gid
    primaries = {pw.pw_gid for pw in pwd.getpwall()}
    empty = next((g for g in grp.getgrall()
                  if g.gr_gid != mine and not g.gr_mem and g.gr_gid not in primaries), None)
    if empty is None:
        pytest.skip("no group here without members")
    p = _file(home, mode=0o664)
    os.chown(p, -1, empty.gr_gid)
    err = _refused(p)
    assert f"group {empty.gr_name} (not your own user-private group" in err.message


@needs_root
@pytest.mark.parametrize(("group_name", "refused"), [("users", True), ("alice", False)])
def test_our_primary_group_counts_unless_it_is_named_after_us(
        home: Path, monkeypatch: pytest.MonkeyPatch, group_name: str, refused: bool) -> None:
    """A primary group shared under another name (every LDAP user's "users") lists no
    one else when the passwd database cannot enumerate its LDAP users, yet they are all in
    it: it is not a user-private group, however empty it looks. That database cannot be
    made here, so the lookups see one: this user as alice, whose primary group (given to
    the file) lists no one else."""
    gid = 4_000_000_321
    me = pwd.struct_passwd(("alice", "x", os.geteuid(), gid, "", "/home/alice", "/bin/sh"))
    group = grp.struct_group((group_name, "x", gid, []))
    getpwuid, getgrgid = pwd.getpwuid, grp.getgrgid
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: me if uid == me.pw_uid
                        else getpwuid(uid))
    monkeypatch.setattr(pwd, "getpwall", lambda: [me])
    monkeypatch.setattr(grp, "getgrgid", lambda g: group if g == gid else getgrgid(g))
    p = _file(home, mode=0o664)
    os.chown(p, -1, gid)
    if refused:
        err = _refused(p)
        assert "group users (not your own user-private group" in err.message
    else:
        writers.check_trusted(p, "kernel")  # a user-private group: ours alone


@needs_root
def test_a_group_the_database_does_not_know_counts_as_foreign(home: Path) -> None:
    gid = 4_000_000_123
    with pytest.raises(KeyError):
        grp.getgrgid(gid)
    p = _file(home, mode=0o664)
    os.chown(p, -1, gid)
    err = _refused(p)
    assert f"group {gid} (not in the group database" in err.message
    p.chmod(0o644)  # without group write the group does not matter
    writers.check_trusted(p, "kernel")


def _set_acl(path: Path, entries: list[tuple[int, int, int]]) -> None:
    """A POSIX access ACL in the kernel's xattr format (what setfacl writes)."""
    raw = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", raw)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"no POSIX ACLs on this filesystem ({exc.strerror})")
        raise


_UNDEF = 0xFFFFFFFF
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def test_an_acl_entry_that_lets_another_user_write_is_refused(home: Path) -> None:
    uid = 65534 if os.geteuid() != 65534 else 65533
    p = _file(home)
    _set_acl(p, [(_USER_OBJ, 6, _UNDEF), (_USER, 6, uid), (_GROUP_OBJ, 4, _UNDEF),
                 (_MASK, 6, _UNDEF), (_OTHER, 4, _UNDEF)])
    assert p.stat().st_mode & 0o020  # the group bits show the mask
    err = _refused(p)
    assert "(an ACL entry)" in err.message


def test_an_acl_mask_without_write_passes(home: Path) -> None:
    uid = 65534 if os.geteuid() != 65534 else 65533
    p = _file(home)
    _set_acl(p, [(_USER_OBJ, 6, _UNDEF), (_USER, 6, uid), (_GROUP_OBJ, 4, _UNDEF),
                 (_MASK, 4, _UNDEF), (_OTHER, 4, _UNDEF)])
    writers.check_trusted(p, "kernel")


def test_a_directory_reached_through_a_link_is_checked_where_it_leads(home: Path) -> None:
    real = home / "real"
    real.mkdir()
    _file(real)
    (home / "images").symlink_to(real)
    real.chmod(0o777)
    err = _refused(home / "images" / "vmlinuz")
    assert f"{real} above it" in err.message


@needs_root
def test_a_link_of_another_user_on_the_way_is_refused(home: Path) -> None:
    uid, _ = _nobody()
    real = home / "real"
    real.mkdir()
    _file(real)
    link = home / "images"
    link.symlink_to(real)
    os.chown(link, uid, -1, follow_symlinks=False)
    with pytest.raises(ConfigError, match="symbolic link owned by uid"):
        writers.check_trusted(link / "vmlinuz", "kernel")


def test_a_tree_is_refused_for_any_entry_others_can_change(home: Path) -> None:
    tree = home / "ipxe" / "src"
    (tree / "arch" / "x86").mkdir(parents=True)
    deep = _file(tree / "arch" / "x86", "Makefile")
    _file(tree, "Makefile")
    (tree / "link").symlink_to("/etc/hostname")  # a link: its directory is what counts
    writers.check_trusted(tree, "ipxe.source", tree=True)
    deep.chmod(0o666)
    err = _refused(tree, tree=True)
    assert f"{deep} in it" in err.message
    deep.chmod(0o644)
    (tree / "arch").chmod(0o777)
    err = _refused(tree, tree=True)
    assert f"{tree / 'arch'} in it" in err.message
    # without tree=True only the directory and its parents count
    writers.check_trusted(tree, "ipxe.source")


def test_outputs_below_a_directory_of_our_own_group_pass(home: Path) -> None:
    """The same rule for what trustboot writes (fsutil.check_parents, check_owned_dir):
    on a Fedora or RHEL host a user's directories are 0775 (umask 002) in their own
    group, and refusing them refused every output directory they made."""
    from trustboot import fsutil

    _skip_unless_in_a_user_private_group()
    out = home / "dist"
    out.mkdir()
    out.chmod(0o775)
    home.chmod(0o775)
    fsutil.check_parents(out / "vmlinuz.sig", "--out directory")
    fsutil.check_owned_dir(out, "--out directory")
    with pytest.raises(ConfigError, match="accessible to other users"):
        fsutil.check_owned_dir(out, "key directory", private=True)  # private: still no


@needs_root
def test_outputs_below_a_directory_another_user_shares_are_refused(home: Path) -> None:
    from tests.conftest import give_group_to_another_user
    from trustboot import fsutil

    out = home / "dist"
    out.mkdir()
    out.chmod(0o775)
    give_group_to_another_user(out)
    with pytest.raises(ConfigError, match="writable by other users"):
        fsutil.check_owned_dir(out, "--out directory")
    with pytest.raises(ConfigError, match=f"{out} above it is writable by other users"):
        fsutil.check_parents(out / "vmlinuz.sig", "--out directory")
