"""Another local user prepared the paths the daemon will use (issue 12, finding 1).

User B cannot log in as the owner, but on a shared host B can create the data dir, a token
file or a socket directory before the owner's daemon starts, or plant symlinks in a
directory B can write. Every such path is refused at start with a message naming it and the
fix; a token file swapped while the daemon runs is not followed. CI runs as root, which is
what lets these tests give a file to another uid; as a normal user they are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.daemons import cli, short_tmpdir, wait_for

B = 4242  # user B: any uid that is not ours
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a file owned by another user")


def serve(data_dir: Path, *extra: str):
    return cli("serve", "--data-dir", str(data_dir), "--listen", "tcp://127.0.0.1:0", *extra, timeout=30)


def planted_token(path: Path, owner: int = B, mode: int = 0o600) -> None:
    path.write_text("b" * 43 + "\n")
    path.chmod(mode)
    os.chown(path, owner, owner)


@as_root
def test_a_token_file_another_user_planted_in_the_data_dir_is_refused():
    data_dir = short_tmpdir()
    planted_token(data_dir / "daemon_token")
    result = serve(data_dir)
    assert result.returncode == 2
    assert f"{data_dir / 'daemon_token'}" in result.stderr and f"owned by uid {B}" in result.stderr


@as_root
def test_a_token_path_another_user_created_first_is_refused():
    theirs = short_tmpdir() / "tokens"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, B, B)
    result = serve(short_tmpdir(), "--token-path", str(theirs / "token"))
    assert result.returncode == 2 and str(theirs) in result.stderr and f"owned by uid {B}" in result.stderr
    assert not (theirs / "token").exists()


def test_a_token_file_others_can_read_is_refused_with_the_fix():
    data_dir = short_tmpdir()
    planted_token(data_dir / "daemon_token", owner=os.geteuid(), mode=0o644)
    result = serve(data_dir)
    assert result.returncode == 2 and f"chmod 600 {data_dir / 'daemon_token'}" in result.stderr


def test_a_symlinked_token_file_is_refused_and_its_target_untouched():
    data_dir = short_tmpdir()
    (data_dir / "daemon_token").symlink_to(data_dir / "elsewhere")
    result = serve(data_dir)
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert not (data_dir / "elsewhere").exists()


@pytest.mark.parametrize("swap", ["other-owner", "symlink", "readable"])
def test_a_token_file_swapped_while_running_is_not_followed(subprocess_daemon, swap):
    if swap == "other-owner" and os.geteuid() != 0:
        pytest.skip("only root can make a file owned by another user")
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    token_file = daemon.data_dir / "daemon_token"
    replacement = daemon.data_dir / "replacement"
    if swap == "symlink":
        replacement.write_text("b" * 43 + "\n")
        replacement.chmod(0o600)
        token_file.unlink()
        token_file.symlink_to(replacement)
    else:
        planted_token(replacement, owner=B if swap == "other-owner" else os.geteuid(),
                      mode=0o644 if swap == "readable" else 0o600)
        os.replace(replacement, token_file)
    log = daemon.data_dir / "logs" / "daemon.log"
    wait_for(lambda: "cannot read the token file" in log.read_text(), timeout=10, message="the swap noticed")
    theirs = {**daemon.headers(), "Authorization": "Bearer " + "b" * 43}
    assert daemon.post({"jsonrpc": "2.0", "method": "system.ping", "id": 1}, headers=theirs).status_code == 401
    assert daemon.rpc("system.ping")["result"] == "pong"  # the owner's token still works


@as_root
def test_a_data_dir_another_user_created_is_refused_and_nothing_runs_as_the_owner():
    """The scenario of the finding: B made the data dir 0777 with a token of B's own."""
    data_dir = short_tmpdir() / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    os.chown(data_dir, B, B)
    planted_token(data_dir / "daemon_token")
    result = serve(data_dir)
    assert result.returncode == 2
    assert f"refusing to use {data_dir}: it is owned by uid {B}" in result.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["daemon_token"]  # nothing written into it


def test_a_data_dir_others_can_write_is_refused_with_the_fix():
    data_dir = short_tmpdir() / "open"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    result = serve(data_dir)
    assert result.returncode == 2 and f"run: chmod go-w {data_dir}" in result.stderr
    assert list(data_dir.iterdir()) == []


@pytest.mark.parametrize("planted", ["logs/auth.jsonl", "logs/daemon.log", "run/daemon.lock", "daemon.db",
                                     "daemon.db-wal", "identity_key"])
def test_a_symlink_planted_where_the_daemon_writes_is_never_followed(planted):
    """A dangling link must not create its target, a live one must not be written through:
    here the target stands for a 0600 file of the owner that B wants to overwrite."""
    data_dir = short_tmpdir()
    for directory in ("logs", "run"):
        (data_dir / directory).mkdir(mode=0o700)
    dangling, owners_file = data_dir.parent / f"{data_dir.name}-created", data_dir.parent / f"{data_dir.name}-own"
    owners_file.write_text("the owner's\n")
    owners_file.chmod(0o600)
    for target in (dangling, owners_file):
        link = data_dir / planted
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        result = serve(data_dir)
        assert result.returncode == 2, result.stderr
        assert f"refusing to use {link}: it is a symbolic link" in result.stderr
    assert not dangling.exists()
    assert owners_file.read_text() == "the owner's\n"


@as_root
@pytest.mark.parametrize("planted", ["logs/auth.jsonl", "run/daemon.lock", "daemon.db", "identity_key"])
def test_a_file_another_user_planted_in_the_data_dir_is_refused(planted):
    data_dir = short_tmpdir()
    for directory in ("logs", "run"):
        (data_dir / directory).mkdir(mode=0o700)
    path = data_dir / planted
    path.write_bytes(b"")
    path.chmod(0o600)
    os.chown(path, B, B)
    result = serve(data_dir)
    assert result.returncode == 2
    assert f"refusing to use {path}: it is owned by uid {B}" in result.stderr
