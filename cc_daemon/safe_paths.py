"""Trusting only what the daemon's own user controls: directories and files on a shared host.

Owns: the one policy for every path the daemon reads secrets from or writes to (its data
dir and the directories inside it, the token file, logs, the lock and pid files, a Unix
socket's directory): a directory must be owned by the daemon's effective uid and not
writable by group or others, and every directory above it must be owned by that uid or by
root and, where others may write to it, sticky (so nobody else can rename our directory
away); a file must be a regular file owned by that uid and not writable by group or
others, and a secret must not be readable by them either. Files are opened with
``O_NOFOLLOW`` and checked on the opened descriptor (``fstat``), not on the path, so a
symlink or a swap between check and use cannot redirect a write.

Must not: create, chmod or repair anything it finds wrong: a path another user prepared
is refused with a message that names it and the fix, and the owner decides. It does not
log: callers report the ``UnsafePath``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: Group- or other-writable: someone else could replace what we read or write.
SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH
#: Any access by group or others, for secrets (tokens, keys).
SHARED_ANY = stat.S_IRWXG | stat.S_IRWXO


class UnsafePath(OSError):
    """A path the daemon will not use; ``str()`` names the path, what is wrong and the fix."""

    def __init__(self, path: os.PathLike[str] | str, problem: str, fix: str):
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(errno.EPERM, f"refusing to use {self.path}: {problem}; {fix}")

    def __str__(self) -> str:
        return self.args[1]


def _owner_problem(info: os.stat_result) -> str | None:
    if info.st_uid != os.geteuid():
        return f"it is owned by uid {info.st_uid}, not by this daemon's uid {os.geteuid()}"
    return None


def check_dir(path: Path) -> None:
    """Refuse ``path`` unless it is a private enough directory with safe ancestors."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise UnsafePath(path, "it does not exist", "create it first") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(path, "it is a symbolic link", f"use the directory it points to ({os.path.realpath(path)})")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(path, "it is not a directory", "remove it or choose another path")
    problem = _owner_problem(info)
    if problem:
        raise UnsafePath(path, problem, "remove it (another user prepared it) or choose another path")
    if info.st_mode & SHARED_WRITE:
        raise UnsafePath(path, f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})",
                         f"run: chmod go-w {path}")
    check_ancestors(path)


def check_ancestors(path: Path) -> None:
    """Every directory above ``path`` is ours or root's, and sticky where others may write.

    Without this, whoever can write to a parent could rename our private directory away and
    put one of their own in its place."""
    for parent in Path(os.path.abspath(path)).parents:
        info = os.stat(parent)  # following links: what matters is the directory reached
        if info.st_uid not in (0, os.geteuid()):
            raise UnsafePath(path, f"its parent {parent} is owned by uid {info.st_uid}",
                             "choose a path under directories that you or root own")
        if info.st_mode & SHARED_WRITE and not info.st_mode & stat.S_ISVTX:
            raise UnsafePath(path, f"its parent {parent} is writable by others and not sticky "
                                   f"(mode {stat.S_IMODE(info.st_mode):04o})", f"run: chmod go-w {parent}")


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, then check it as ``check_dir`` does.

    An existing directory keeps its mode: chmod-ing a directory the user chose would be a
    surprise, so a shared one is refused with the fix instead."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(path)


def check_file(fd: int, path: Path, *, secret: bool = False) -> os.stat_result:
    """Refuse the file open on ``fd`` unless it is a regular file of ours that others cannot
    write (nor read, for a ``secret``); returns its ``fstat``."""
    info = os.fstat(fd)
    _check_file_info(info, path, secret)
    return info


def check_existing_file(path: Path) -> None:
    """Refuse a file already at ``path`` that ``check_file`` would refuse, judged by ``lstat``.

    For files that must only be opened by their library: SQLite's database, whose POSIX
    locks this process would lose if any other descriptor of it were closed. A check on the
    path is sound here only because its directory passed ``check_dir`` first: nobody else
    can put or swap an entry in a directory only we can write to. A missing file passes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(path, "it is a symbolic link", "remove it")
    _check_file_info(info, path, secret=False)


def _check_file_info(info: os.stat_result, path: Path, secret: bool) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(path, "it is not a regular file", "remove it")
    problem = _owner_problem(info)
    if problem:
        raise UnsafePath(path, problem, "remove it (another user put it there)")
    shared = SHARED_ANY if secret else SHARED_WRITE
    if info.st_mode & shared:
        mode = stat.S_IMODE(info.st_mode)
        fix = f"run: chmod 600 {path}" if secret else f"run: chmod go-w {path}"
        raise UnsafePath(path, f"it is {'accessible' if secret else 'writable'} by group or others "
                               f"(mode {mode:04o})", fix)


def open_private(path: Path, flags: int, mode: int = 0o600, *, secret: bool = False) -> int:
    """``os.open`` that never follows a symlink at ``path`` and checks what it opened.

    ``O_NOFOLLOW`` makes a symlink (dangling or not) fail with ELOOP instead of being
    followed, and ``O_NONBLOCK`` keeps a FIFO planted at the path from blocking the open; the
    checks then run on the descriptor, so nothing can be swapped in between."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(path, "it is a symbolic link", "remove it") from None
        raise
    try:
        check_file(fd, path, secret=secret)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path, *, secret: bool = False) -> bytes:
    """The contents of a file that passes ``open_private``'s checks."""
    fd = open_private(path, os.O_RDONLY, secret=secret)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()
