"""The daemon's SQLite database, ``<data-dir>/daemon.db``: one file, several components' tables.

Owns: how every user of the file opens it (``open_database``: private file mode, WAL,
``synchronous``, lock wait); how a component's tables are versioned (``migrate``, one row
per component in ``schema_version``), so each component keeps its own tables in the same
file with the same pragmas; undoing a failed transaction (``rollback_quietly``); the checks
of ``daemon doctor`` (SQLite's integrity check and that every schema version is known).

Must not: know what a component keeps in its tables or how it reads them (the event log
and the record tables own theirs), nor hold a connection itself: each component opens its
own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Mapping, Sequence

from .safe_paths import check_existing_file

log = logging.getLogger("cc_daemon.database")

#: ``normal``: a committed transaction survives a crash or ``kill -9`` of the daemon (the OS
#: has it). ``full``: it also survives power loss or an OS crash (the WAL is fsynced per commit).
SYNC_MODES = ("normal", "full")
#: How long a connection waits for another one's lock before reporting ``database is locked``.
BUSY_TIMEOUT_S = 5.0


class DatabaseError(RuntimeError):
    """The daemon's database cannot be opened or read; the message says why, for a human."""


class SchemaTooNew(DatabaseError):
    """The database was written by a newer cc_daemon than this one."""


def open_database(path: Path, *, synchronous: str = "normal", read_only: bool = False) -> sqlite3.Connection:
    """A connection to the daemon's database with the settings every user of it shares.

    Autocommit mode (``isolation_level=None``): transactions are the caller's explicit
    ``BEGIN`` / ``COMMIT``, never opened behind its back. Usable from one thread at a time.
    A writable open creates the file private (0600) and puts it in WAL mode, so that
    readers never block the writer and the writer never blocks readers. An existing file is
    never opened outside SQLite: closing any other descriptor of it would drop every POSIX
    lock this process holds on it, and another process closing its connection would then
    take itself for the last user and delete the WAL under the daemon.
    """
    if synchronous not in SYNC_MODES:
        raise ValueError(f"synchronous must be one of {SYNC_MODES}")
    path = Path(path)
    try:
        if read_only:
            db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            db.execute("PRAGMA query_only = ON")
            return db
        for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            check_existing_file(existing)  # planted by another user, or a symlink out of the dir
        try:  # private from its first byte
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # an existing file is only ever opened through SQLite (see above)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            db.close()
            raise DatabaseError(f"{path}: SQLite refused WAL mode (got {mode!r}); is it on a network filesystem?")
        db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        return db
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"cannot open the database {path}: {exc} "
                            "(run `cheetahclaws daemon doctor`, or move the file aside)") from None
    except OSError as exc:
        raise DatabaseError(f"cannot open the database {path}: {exc.strerror or exc}") from None


def rollback_quietly(db: sqlite3.Connection) -> None:
    """Roll back an open transaction; a failure here only means there is nothing to undo.

    SQLite may already have rolled back by itself (SQLITE_FULL does): a second ROLLBACK
    would fail and hide the real error.
    """
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


# -- schema versions ------------------------------------------------------------------------
def schema_version(db: sqlite3.Connection, component: str) -> int:
    """The version of ``component``'s tables in ``db`` (0: never created)."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    row = db.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    return row[0] if row else 0


def migrate(db: sqlite3.Connection, component: str, migrations: Sequence[Sequence[str]], path: Path) -> int:
    """Bring ``component``'s tables to the newest version this code knows; returns it.

    ``migrations[i]`` upgrades version ``i`` to ``i + 1``. Each step runs in its own
    transaction with its version bump, so a crash mid-way leaves the database at a
    consistent older version that the next start continues from. A database at a newer
    version than ``migrations`` describes is refused, not guessed at.
    """
    known = len(migrations)
    current = schema_version(db, component)
    if current > known:
        raise SchemaTooNew(f"{path} holds {component} schema version {current}, but this cc_daemon only knows "
                           f"versions up to {known}: upgrade cc_daemon, or use another --data-dir")
    for version in range(current, known):
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version "
                       "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            for statement in migrations[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (component, version) VALUES (?, ?) "
                       "ON CONFLICT (component) DO UPDATE SET version = excluded.version", (component, version + 1))
            db.execute("COMMIT")
        except BaseException:
            rollback_quietly(db)
            raise
        log.info("%s: %s schema migrated to version %d", path, component, version + 1)
    return known


# -- checks ---------------------------------------------------------------------------------
def known_schema_versions() -> dict[str, int]:
    """The newest version of each component's tables that this cc_daemon knows."""
    from . import eventtable, records  # both build on this module, so they are imported only here

    return {**eventtable.SCHEMA_VERSIONS, **records.SCHEMA_VERSIONS}


def check_database(path: Path, schema_versions: Mapping[str, int] | None = None) -> list[str]:
    """Problems in the database at ``path`` (SQLite's integrity check, known schema); [] if healthy.

    ``schema_versions``: the newest version of each component this code knows (default:
    ``known_schema_versions()``). Opens the file read-only, so it is safe while a daemon uses it.
    """
    path = Path(path)
    if not path.exists():
        return [f"no database at {path} (has a daemon run with this data dir?)"]
    try:
        db = open_database(path, read_only=True)
    except DatabaseError as exc:
        return [str(exc)]
    try:
        return database_problems(db, path, known_schema_versions() if schema_versions is None else schema_versions)
    except sqlite3.Error as exc:
        return [f"cannot check {path}: {exc}"]
    finally:
        db.close()


def database_problems(db: sqlite3.Connection, path: Path, schema_versions: Mapping[str, int]) -> list[str]:
    """SQLite's integrity check of ``db``, then every component in ``schema_versions`` whose
    tables are newer than that; [] when sound."""
    messages = [row[0] for row in db.execute("PRAGMA integrity_check")]
    return ([] if messages == ["ok"] else messages) + [
        f"{path}: {component} schema version {version} is newer than this cc_daemon knows ({known})"
        for component, known in schema_versions.items() if (version := schema_version(db, component)) > known]
