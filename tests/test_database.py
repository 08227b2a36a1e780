"""The daemon's database on its own: opening, migrations, rolling back, and the doctor's checks.

The event log's and the record tables' use of it is tested with them (test_eventlog,
test_permissions); here each helper of ``cc_daemon.database`` is tested without them.
"""

from __future__ import annotations

import sqlite3
import stat
import time

import pytest

from cc_daemon.database import (DatabaseError, SchemaTooNew, check_database, database_problems,
                                known_schema_versions, migrate, open_database, rollback_quietly, schema_version)
from cc_daemon.eventlog import SqliteEventStore
from cc_daemon.events import Event
from cc_daemon.records import TABLES, RecordTable

NOTES_V1 = ("CREATE TABLE notes (body TEXT)",)


def set_version(path, component: str, version: int) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ? WHERE component = ?", (version, component))
    db.commit()
    db.close()


# -- opening --------------------------------------------------------------------------------
def test_a_new_database_is_private_in_wal_mode_with_the_asked_synchronous(tmp_path):
    path = tmp_path / "daemon.db"
    db = open_database(path, synchronous="full")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert db.isolation_level is None and not db.in_transaction  # transactions are the caller's
    db.close()


def test_an_unknown_synchronous_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        open_database(tmp_path / "daemon.db", synchronous="off")
    assert not (tmp_path / "daemon.db").exists()


def test_a_read_only_connection_cannot_write(tmp_path):
    path = tmp_path / "daemon.db"
    writer = open_database(path)
    writer.execute("CREATE TABLE notes (body TEXT)")
    reader = open_database(path, read_only=True)
    with pytest.raises(sqlite3.OperationalError):
        reader.execute("INSERT INTO notes VALUES ('x')")
    reader.close()
    writer.close()


def test_a_file_that_is_not_a_database_is_refused_with_a_way_out(tmp_path):
    path = tmp_path / "daemon.db"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(DatabaseError, match="cannot open the database.*daemon doctor"):
        open_database(path)
    assert check_database(path) and "cannot" in check_database(path)[0]


# -- migrations and rolling back ------------------------------------------------------------
def test_a_component_never_migrated_is_at_version_zero(tmp_path):
    db = open_database(tmp_path / "daemon.db")
    assert schema_version(db, "notes") == 0  # not even the schema_version table yet
    migrate(db, "notes", [NOTES_V1], tmp_path / "daemon.db")
    assert (schema_version(db, "notes"), schema_version(db, "other")) == (1, 0)
    db.close()


def test_a_full_disk_during_a_migration_reports_the_full_disk(tmp_path):
    """SQLite rolls a failed write back by itself on SQLITE_FULL: the migration's own rollback
    must not then fail and hide the reason."""
    path = tmp_path / "daemon.db"
    db = open_database(path)
    migrate(db, "notes", [NOTES_V1], path)
    db.execute("PRAGMA max_page_count = 1")  # clamped to the current page count
    with pytest.raises(sqlite3.OperationalError, match="full"):
        migrate(db, "notes", [NOTES_V1, ("INSERT INTO notes VALUES (zeroblob(100000))",)], path)
    assert schema_version(db, "notes") == 1 and not db.in_transaction
    db.close()


def test_rollback_quietly_undoes_an_open_transaction_and_is_harmless_without_one(tmp_path):
    db = open_database(tmp_path / "daemon.db")
    db.execute("CREATE TABLE notes (body TEXT)")
    rollback_quietly(db)  # nothing open: nothing happens
    db.execute("BEGIN")
    db.execute("INSERT INTO notes VALUES ('x')")
    rollback_quietly(db)
    assert not db.in_transaction and db.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    db.close()


# -- the doctor's checks --------------------------------------------------------------------
def test_the_known_schema_versions_are_every_component_of_the_daemons_database():
    assert known_schema_versions() == {"event_log": 1, **{table: 1 for table in TABLES}}


def test_check_database_reports_a_missing_file_and_passes_a_sound_one(tmp_path):
    path = tmp_path / "daemon.db"
    assert "no database" in check_database(path)[0]
    SqliteEventStore(path).close()
    for table in TABLES:
        RecordTable(path, table).close()
    assert check_database(path) == []


@pytest.mark.parametrize("component", ["event_log", *TABLES])
def test_check_database_names_any_component_newer_than_this_code(tmp_path, component):
    path = tmp_path / "daemon.db"
    SqliteEventStore(path).close()
    for table in TABLES:
        RecordTable(path, table).close()
    set_version(path, component, 7)
    assert check_database(path) == [f"{path}: {component} schema version 7 is newer than this cc_daemon knows (1)"]
    assert check_database(path, {"notes": 1}) == []  # only the components asked about
    if component in TABLES:
        with pytest.raises(SchemaTooNew, match=f"{component} schema version 7"):
            RecordTable(path, component)


def test_database_problems_include_what_sqlites_integrity_check_finds(tmp_path):
    path = tmp_path / "daemon.db"
    db = open_database(path)
    db.execute("CREATE TABLE notes (a INTEGER, b INTEGER)")
    db.execute("CREATE INDEX notes_a ON notes (a)")
    db.executemany("INSERT INTO notes VALUES (?, ?)", [(i, -i) for i in range(50)])
    assert database_problems(db, path, {}) == []
    # An index whose stored definition no longer matches its entries: damaged, yet readable.
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX notes_a ON notes (b)' WHERE name = 'notes_a'")
    db.close()
    assert any("missing from index notes_a" in problem for problem in check_database(path, {}))


def test_the_live_event_logs_integrity_check_reads_beside_the_writer(tmp_path):
    path = tmp_path / "daemon.db"
    store = SqliteEventStore(path)
    store.append(Event(1, time.time(), "x", {}))
    assert store.wait_visible(1, 5)
    assert store.integrity_check() == []
    set_version(path, "event_log", 3)  # as a newer cc_daemon would, while this one runs
    assert store.integrity_check() == [f"{path}: event_log schema version 3 is newer than this cc_daemon knows (1)"]
    store.close()
