"""On-disk layout of a daemon's data directory, and crash-safe file primitives.

Owns: where every file the daemon writes lives (all of it under one data dir, so two
daemons with two data dirs never touch each other's files), atomic replacement of small
files, secret files that are 0600 from their first byte, the single-instance lock and
the discovery file that CLI processes use to find a running daemon.

Must not: know about HTTP, JSON-RPC or any service; decide policy (who may read what).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import profiles
from .safe_paths import make_private_dir, open_private

def default_data_dir() -> Path:
    """The data dir used when none is named: that of the current profile (``profiles``)."""
    return profiles.data_dir_of(profiles.current())


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data directory. Creating the object touches nothing on disk."""

    root: Path

    @classmethod
    def resolve(cls, given: str | os.PathLike[str] | None) -> DataDir:
        root = Path(given).expanduser() if given else default_data_dir()
        return cls(root.absolute())

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def default_socket(self) -> Path:
        return self.run_dir / "daemon.sock"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "daemon.lock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "daemon.pid"

    @property
    def discovery_file(self) -> Path:
        return self.root / "daemon.json"

    @property
    def default_token_file(self) -> Path:
        return self.root / "daemon_token"

    @property
    def daemon_log(self) -> Path:
        return self.logs_dir / "daemon.log"

    @property
    def audit_log(self) -> Path:
        return self.logs_dir / "auth.jsonl"

    @property
    def database(self) -> Path:
        return self.root / "daemon.db"

    @property
    def sessions_dir(self) -> Path:
        return self.root / "sessions"

    def session_stderr(self, session_id: str) -> Path:
        """The log of one session's runtime stderr (its directory is made when the runtime starts)."""
        return self.sessions_dir / session_id / "stderr.log"

    @property
    def worktrees_dir(self) -> Path:
        """Where sessions created with ``isolation: "worktree"`` get their git worktrees."""
        return self.root / "worktrees"

    @property
    def identity_key(self) -> Path:
        """The daemon's secret for deriving client keys from client ids (RFC 0002)."""
        return self.root / "identity_key"

    @property
    def clients_dir(self) -> Path:
        """Where *clients* keep their own ids (``<kind>.id``), as the contract places them."""
        return self.root / "clients"

    def client_id_file(self, kind: str) -> Path:
        """Where a client of ``kind`` keeps the id the daemon minted for it."""
        return self.clients_dir / f"{kind}.id"

    def attach_point(self, kind: str, session_id: str) -> Path:
        """Where ``session attach`` by a client of ``kind`` remembers the last event it showed."""
        return self.clients_dir / "attach" / f"{kind}.{session_id}"

    def ensure(self) -> None:
        """Create the directories the daemon writes to, private to the current user; one that
        another user prepared (or that others may write to) is refused (``UnsafePath``)."""
        for directory in (self.root, self.run_dir, self.logs_dir):
            make_private_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half.

    The temp file is created with ``mode`` (O_EXCL, so no moment with a wider mode), lives in
    the same directory (``os.replace`` is atomic only within a filesystem) and is fsynced,
    then the directory is fsynced so the rename itself survives a crash.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, payload: Any, mode: int = 0o600) -> None:
    atomic_write(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable as JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def identity_of(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what is at ``path`` now, not following a symlink; None if nothing."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def remove_if_unchanged(path: Path, identity: tuple[int, int] | None) -> None:
    """Unlink ``path`` only while it is still the file that had ``identity``: after its data
    dir was deleted, another daemon may have put its own file at the same path."""
    if identity is not None and identity_of(path) == identity:
        remove_quietly(path)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class AlreadyRunning(RuntimeError):
    """Another live daemon holds the data dir's lock."""


class InstanceLock:
    """An exclusive ``flock`` held for the daemon's whole life.

    The kernel releases it when the process dies, however it dies, so a leftover lock file
    never blocks a restart, and a reused pid can never fake a live daemon.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        # Not followed if it is a symlink, even a dangling one: opening with O_CREAT would
        # otherwise create the target, wherever another user pointed it.
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise AlreadyRunning(str(self.path)) from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def is_held_elsewhere(self) -> bool:
        """True when some live process holds the lock (used by CLI processes)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False


class PrivateRotatingFileHandler(logging.FileHandler):
    """A size-rotated log whose every file, including the ones rotation creates, is 0600.

    Logs name peers and request ids; other local users have no business reading them, and
    setting a process-wide umask instead would leak into the files agents create.

    Rotation as ``logging.handlers.RotatingFileHandler`` does it (a record that would take
    the file to ``maxBytes`` first moves it to ``.1``, ``.1`` to ``.2`` ... up to
    ``.<backupCount>``, which must be at least 1), written out here because importing
    ``logging.handlers`` (and with it ``pickle``) for this alone costs ~0.5 MB of the
    daemon's idle RSS.
    """

    def __init__(self, filename: str | os.PathLike[str], maxBytes: int, backupCount: int,
                 encoding: str | None = None):
        super().__init__(filename, mode="a", encoding=encoding)
        self.max_bytes = maxBytes
        self.backup_count = backupCount

    def _open(self):
        # A log planted as a symlink to another file of the owner must not be appended to.
        fd = open_private(Path(self.baseFilename), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._is_full_for(record):
                self._rotate()
        except Exception:
            self.handleError(record)
            return
        super().emit(record)

    def _is_full_for(self, record: logging.LogRecord) -> bool:
        if self.stream is None:  # closed, or a rotation could not reopen it
            self.stream = self._open()
        return self.stream.seek(0, os.SEEK_END) + len(self.format(record)) + 1 >= self.max_bytes

    def _rotate(self) -> None:
        self.stream.close()
        self.stream = None
        for index in range(self.backup_count - 1, 0, -1):
            older = f"{self.baseFilename}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.baseFilename}.{index + 1}")
        if os.path.exists(self.baseFilename):  # someone may have removed it under us
            os.replace(self.baseFilename, f"{self.baseFilename}.1")
        self.stream = self._open()


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:
        return False
