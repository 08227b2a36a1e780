"""Durable records of services, in the daemon's database next to the event log.

Owns: one small table per component mapping a key to a JSON record (the client registry
by ``client_key``, pending permission requests by ``request_id``, sessions by ``session_id``), written in one
transaction per change set, so a crash leaves every record either old or new.

Must not: interpret the records (each service owns its record format); open or version
the database other than through ``database``; sit on a hot path: these writes happen when
a client is first confirmed or a permission request is created or resolved, not per request.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from .database import migrate, open_database, rollback_quietly

#: The record tables a daemon keeps.
TABLES = ("clients", "permission_requests", "sessions", "daily_usage")


def migrations(table: str) -> tuple[tuple[str, ...], ...]:
    """The schema steps of a record table (one so far)."""
    return ((f"CREATE TABLE {table} (key TEXT PRIMARY KEY, record TEXT NOT NULL)",),)


#: The newest schema version of each record table, for ``daemon doctor``.
SCHEMA_VERSIONS = {table: len(migrations(table)) for table in TABLES}


class RecordsNotStored(RuntimeError):
    """A change set could not be written (disk full, read-only, I/O error); nothing of it was."""


class RecordTable:
    """A durable ``key -> JSON object`` map. Thread-safe."""

    def __init__(self, database: Path, table: str, synchronous: str = "normal"):
        if table not in TABLES:
            raise ValueError(f"unknown record table {table!r}")
        self._table = table
        self._lock = threading.Lock()
        self._db = open_database(database, synchronous=synchronous)
        try:
            migrate(self._db, table, migrations(table), database)
        except BaseException:
            self._db.close()
            raise

    def load(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(f"SELECT key, record FROM {self._table}").fetchall()
        return {key: json.loads(record) for key, record in rows}

    def write(self, upserts: dict[str, dict[str, Any]] | None = None, deletes: Iterable[str] = ()) -> None:
        """Apply a change set atomically."""
        upserts = upserts or {}
        deletes = list(deletes)
        if not upserts and not deletes:
            return
        rows = [(key, json.dumps(record, separators=(",", ":"))) for key, record in upserts.items()]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(f"INSERT INTO {self._table} (key, record) VALUES (?, ?) "
                                     "ON CONFLICT (key) DO UPDATE SET record = excluded.record", rows)
                self._db.executemany(f"DELETE FROM {self._table} WHERE key = ?", [(key,) for key in deletes])
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback_quietly(self._db)
                raise RecordsNotStored(f"{self._table}: {type(exc).__name__}: {exc}") from exc
            except BaseException:
                rollback_quietly(self._db)
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
