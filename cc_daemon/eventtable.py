"""The event log's tables in the daemon's database, and how an event becomes a row and back.

Owns: the schema of ``events`` and ``event_log_meta`` and its migrations (component
``event_log``); the row layout of an event and its codec (the data as compact JSON, the
originator as its three columns); the multi-row inserts; reading rows back as events within
a byte bound, and what an event costs in memory for such bounds (``memory_of``).

Must not: open the database or run transactions (the event log does, through
``database``); decide which ids are stored, visible or pruned.
"""

from __future__ import annotations

import json
import sqlite3
from itertools import chain
from typing import Any

from .events import Event, Originator, compact_json

COMPONENT = "event_log"
#: Forward migrations of the event log's tables: entry ``i`` upgrades version ``i`` to ``i + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # No secondary index: each one costs a b-tree insert per event on the hot path
        # (measured 20-60 % of the insert cost); reads go by id range, which is the rowid.
        """CREATE TABLE events (
               id          INTEGER PRIMARY KEY,
               ts          REAL NOT NULL,
               type        TEXT NOT NULL,
               session_id  TEXT,
               client_key  TEXT,
               client_ref  TEXT,
               client_kind TEXT,
               data        TEXT NOT NULL
           )""",
        # The newest id ever committed, written whenever pruning deletes rows, so that ids
        # never go back even after retention removed every event.
        "CREATE TABLE event_log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ),
)
#: The newest schema version of the event log's tables, for ``daemon doctor``.
SCHEMA_VERSIONS = {COMPONENT: len(MIGRATIONS)}

COLUMNS = "id, ts, type, session_id, client_key, client_ref, client_kind, data"
INSERT_EVENT = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
#: Rows per multi-row INSERT. A statement step storing 16 rows costs less per event than a step
#: per row (measured 1.8-2.1 against 2.7-2.9 us per event, in commits of 100 to 1000 events);
#: more rows per statement gained nothing measurable, and left more of a batch to single-row
#: inserts. 128 parameters are far below SQLite's limit (999 before 3.32).
INSERT_ROWS = 16
INSERT_EVENTS = f"INSERT INTO events ({COLUMNS}) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * INSERT_ROWS)
SET_META = ("INSERT INTO event_log_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value")

Row = tuple[Any, ...]
#: Where a row holds the event's data (compact JSON).
DATA = 7


def event_row(event: Event) -> Row:
    """The table row of ``event``; raises if its data is not JSON (before anything is stored)."""
    originator = event.originator
    return (event.id, event.ts, event.type, event.session_id,
            originator.client_key if originator else None, originator.client_ref if originator else None,
            originator.kind if originator else None, compact_json(event.data))


def event_from_row(row: Row) -> Event:
    event_id, ts, event_type, session_id, client_key, client_ref, client_kind, data = row
    originator = Originator(client_key, client_ref, client_kind) if client_key is not None else None
    return Event(event_id, ts, event_type, json.loads(data), session_id, originator)


def memory_of(data_json: str) -> int:
    """What an event read back or kept in memory costs, for the byte bounds: its decoded data
    and the JSON rendering streams share (``Event.to_json``) are each about as long as its
    data's JSON, which is ASCII (one byte per character)."""
    return 2 * len(data_json)


def insert_rows(db: sqlite3.Connection, rows: list[Row]) -> None:
    """``rows`` into ``events``: whole groups of ``INSERT_ROWS`` a statement, the rest one by one."""
    grouped = len(rows) - len(rows) % INSERT_ROWS
    if grouped:  # a call with nothing to do still costs a microsecond, and a lone event is common
        db.executemany(INSERT_EVENTS, [list(chain.from_iterable(rows[start:start + INSERT_ROWS]))
                                       for start in range(0, grouped, INSERT_ROWS)])
    if grouped < len(rows):
        db.executemany(INSERT_EVENT, rows[grouped:])


def read_rows(cursor: sqlite3.Cursor, max_bytes: int) -> tuple[list[Event], bool]:
    """The events of ``cursor``'s rows while they fit in ``max_bytes`` (``memory_of``; the first
    row always), and whether rows were left unread. Closes the cursor: an unfinished statement
    would keep its read transaction, and a WAL restart checkpoint waits for every reader."""
    events: list[Event] = []
    left = max_bytes
    try:
        for row in cursor:
            left -= memory_of(row[DATA])
            if left < 0 and events:
                return events, True
            events.append(event_from_row(row))
        return events, False
    finally:
        cursor.close()
