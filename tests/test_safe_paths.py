"""The path policy on its own: what another local user can plant is refused, with the fix named.

The suite runs as root in CI, so "another user" is simulated with chown to an unused uid; as
a normal user those cases are skipped (only root can give a file away)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cc_daemon.safe_paths import UnsafePath, check_dir, make_private_dir, open_private, read_private

from helpers.daemons import short_tmpdir

OTHER_UID = 4242
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a file owned by another user")


@pytest.fixture
def base() -> Path:
    return short_tmpdir()


def test_a_fresh_private_dir_passes(base):
    make_private_dir(base / "a" / "b")
    assert stat.S_IMODE(os.stat(base / "a" / "b").st_mode) == 0o700


def test_a_dir_writable_by_others_is_refused_with_the_fix(base):
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath) as caught:
        make_private_dir(shared)
    assert str(shared) in str(caught.value) and "chmod go-w" in str(caught.value)


@as_root
def test_a_dir_owned_by_another_user_is_refused(base):
    theirs = base / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafePath, match=f"owned by uid {OTHER_UID}"):
        check_dir(theirs)


@as_root
def test_a_dir_under_another_users_dir_is_refused(base):
    theirs = base / "theirs"
    (theirs / "mine").mkdir(parents=True, mode=0o700)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafePath, match=f"parent {theirs} is owned by uid {OTHER_UID}"):
        check_dir(theirs / "mine")


def test_a_dir_under_a_shared_non_sticky_dir_is_refused_but_sticky_is_fine(base):
    open_dir = base / "open"
    (open_dir / "mine").mkdir(parents=True, mode=0o700)
    open_dir.chmod(0o777)
    with pytest.raises(UnsafePath, match="not sticky"):
        check_dir(open_dir / "mine")
    open_dir.chmod(0o1777)
    check_dir(open_dir / "mine")


def test_a_symlinked_dir_is_refused(base):
    (base / "real").mkdir(mode=0o700)
    (base / "link").symlink_to(base / "real")
    with pytest.raises(UnsafePath, match="symbolic link"):
        check_dir(base / "link")


@pytest.mark.parametrize("target_exists", [True, False], ids=["symlink", "dangling-symlink"])
def test_a_symlink_is_never_followed_not_even_to_create_its_target(base, target_exists):
    target = base / "victim"
    if target_exists:
        target.write_bytes(b"owner's file\n")
        target.chmod(0o600)
    (base / "auth.jsonl").symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link"):
        open_private(base / "auth.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    assert target.exists() == target_exists
    if target_exists:
        assert target.read_bytes() == b"owner's file\n"


@as_root
def test_a_file_owned_by_another_user_is_refused(base):
    planted = base / "daemon_token"
    planted.write_text("their-token\n")
    planted.chmod(0o600)
    os.chown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafePath, match=f"owned by uid {OTHER_UID}"):
        read_private(planted, secret=True)


def test_a_secret_readable_by_others_is_refused_and_a_private_one_is_read(base):
    token = base / "daemon_token"
    token.write_text("t\n")
    token.chmod(0o644)
    with pytest.raises(UnsafePath, match="chmod 600"):
        read_private(token, secret=True)
    token.chmod(0o600)
    assert read_private(token, secret=True) == b"t\n"


def test_a_fifo_is_refused_without_blocking(base):
    os.mkfifo(base / "daemon.lock", 0o600)
    with pytest.raises(UnsafePath, match="not a regular file"):
        open_private(base / "daemon.lock", os.O_RDWR | os.O_CREAT)
