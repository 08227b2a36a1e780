"""The event log's tables on their own: an event as a row and back, multi-row inserts, byte-bounded reads."""

from __future__ import annotations

import sqlite3

import pytest

from cc_daemon.database import migrate, open_database
from cc_daemon.events import Event, Originator
from cc_daemon.eventtable import (COLUMNS, COMPONENT, INSERT_ROWS, MIGRATIONS, event_from_row, event_row,
                                  insert_rows, memory_of, read_rows)

ALICE = Originator("a" * 64, "ref-alice", "repl")


@pytest.fixture
def db(tmp_path):
    db = open_database(tmp_path / "daemon.db")
    migrate(db, COMPONENT, MIGRATIONS, tmp_path / "daemon.db")
    yield db
    db.close()


def same(a: Event, b: Event) -> bool:
    return (a.id, a.ts, a.type, a.data, a.session_id, a.originator) == (b.id, b.ts, b.type, b.data, b.session_id,
                                                                        b.originator)


@pytest.mark.parametrize("event", [Event(1, 1.5, "text_chunk", {"text": "hé", "n": [1, None]}, "s-1", ALICE),
                                   Event(2, 2.0, "x", {})])
def test_an_event_survives_its_row(event):
    row = event_row(event)
    assert same(event_from_row(row), event)
    assert memory_of(row[-1]) == 2 * len(row[-1])


def test_data_that_is_not_json_fails_before_anything_is_stored():
    with pytest.raises(ValueError):
        event_row(Event(1, 0.0, "x", {"nan": float("nan")}))
    with pytest.raises(TypeError):
        event_row(Event(1, 0.0, "x", {"set": {1}}))


@pytest.mark.parametrize("count", [0, 1, INSERT_ROWS - 1, INSERT_ROWS, INSERT_ROWS + 1, 3 * INSERT_ROWS + 5])
def test_insert_rows_stores_every_row_once_in_order(db, count):
    rows = [event_row(Event(i + 1, float(i), "x", {"i": i})) for i in range(count)]
    insert_rows(db, rows)
    assert db.execute(f"SELECT {COLUMNS} FROM events ORDER BY id").fetchall() == rows


def test_read_rows_stops_at_its_byte_bound_but_always_reads_one_and_closes_the_cursor(db):
    rows = [event_row(Event(i + 1, 0.0, "x", {"pad": "y" * 40})) for i in range(5)]
    insert_rows(db, rows)
    size = memory_of(rows[0][-1])
    for max_bytes, expected in ((5 * size, ([1, 2, 3, 4, 5], False)), (2 * size, ([1, 2], True)), (1, ([1], True))):
        cursor = db.execute(f"SELECT {COLUMNS} FROM events ORDER BY id")
        events, cut = read_rows(cursor, max_bytes)
        assert ([event.id for event in events], cut) == expected
        with pytest.raises(sqlite3.ProgrammingError):
            cursor.fetchone()  # closed: its read transaction is over
