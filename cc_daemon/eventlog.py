"""The durable event log: events kept in SQLite so that nothing acknowledged is ever lost.

Owns: the event tables of ``<data-dir>/daemon.db`` and their migrations; group commit (one
writer thread turns a burst of appends into one transaction); the visible watermark (an
event becomes readable only once committed, so no reader ever sees an id a crash could
take back); an in-memory cache of recent events, bounded by count and by bytes, that serves
the live tail without touching disk; paged reads of older history on separate read-only
connections, each page bounded by bytes too; retention by count and age, pruned by the
writer in small steps; health and SQLite's integrity check.

Also owns how the daemon's database is opened (``open_database``) and how a component's
tables are versioned (``migrate``, one row per component in ``schema_version``), so other
stores can keep their own tables in the same file with the same pragmas.

Must not: assign ids or decide who may see what (the bus does); know about HTTP or
JSON-RPC; store anything about a client beyond an event's ``Originator`` (keyed hash,
public ref, kind).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate, chain
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .events import Event, EventNotDurable, Originator, compact_json

log = logging.getLogger("cc_daemon.eventlog")

DEFAULT_RETENTION_EVENTS = 1_000_000
DEFAULT_RETENTION_AGE_S = 7 * 86400.0
#: ``normal``: a committed event survives a crash or ``kill -9`` of the daemon (the OS has
#: it). ``full``: it also survives power loss or an OS crash (the WAL is fsynced per commit).
SYNC_MODES = ("normal", "full")
#: How long a connection waits for another one's lock before reporting ``database is locked``.
BUSY_TIMEOUT_S = 5.0

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


class EventLogError(RuntimeError):
    """The event log cannot be opened or read; the message says why, for a human."""


class SchemaTooNew(EventLogError):
    """The database was written by a newer cc_daemon than this one."""


# -- the database file ----------------------------------------------------------------------
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
        try:  # private from its first byte
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # an existing file is only ever opened through SQLite (see above)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            db.close()
            raise EventLogError(f"{path}: SQLite refused WAL mode (got {mode!r}); is it on a network filesystem?")
        db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        return db
    except sqlite3.DatabaseError as exc:
        raise EventLogError(f"cannot open the database {path}: {exc} "
                            "(run `cheetahclaws daemon doctor`, or move the file aside)") from None
    except OSError as exc:
        raise EventLogError(f"cannot open the database {path}: {exc.strerror or exc}") from None


def schema_version(db: sqlite3.Connection, component: str) -> int:
    """The version of ``component``'s tables in ``db`` (0: never created)."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    row = db.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    return row[0] if row else 0


def migrate(db: sqlite3.Connection, component: str, migrations: Sequence[Sequence[str]], path: Path) -> int:
    """Bring ``component``'s tables to the newest version this code knows; returns it.

    Each step runs in its own transaction with its version bump, so a crash mid-way leaves
    the database at a consistent older version that the next start continues from. A
    database at a newer version than ``migrations`` describes is refused, not guessed at.
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
            db.execute("ROLLBACK")
            raise
        log.info("%s: %s schema migrated to version %d", path, component, version + 1)
    return known


def check_database(path: Path, schema_versions: dict[str, int] | None = None) -> list[str]:
    """Problems in the database at ``path`` (SQLite's integrity check, known schema); [] if healthy.

    ``schema_versions``: the newest version of each component this code knows (default:
    the event log's alone). Opens the file read-only, so it is safe while a daemon uses it.
    """
    path = Path(path)
    if not path.exists():
        return [f"no database at {path} (has a daemon run with this data dir?)"]
    try:
        db = open_database(path, read_only=True)
    except EventLogError as exc:
        return [str(exc)]
    try:
        return integrity_problems(db) + schema_problems(db, path, schema_versions or {COMPONENT: len(MIGRATIONS)})
    except sqlite3.Error as exc:
        return [f"cannot check {path}: {exc}"]
    finally:
        db.close()


def integrity_problems(db: sqlite3.Connection) -> list[str]:
    messages = [row[0] for row in db.execute("PRAGMA integrity_check")]
    return [] if messages == ["ok"] else messages


def schema_problems(db: sqlite3.Connection, path: Path, schema_versions: dict[str, int]) -> list[str]:
    return [f"{path}: {component} schema version {version} is newer than this cc_daemon knows ({known})"
            for component, known in schema_versions.items()
            if (version := schema_version(db, component)) > known]


# -- rows -----------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class QueryPage:
    """One page of ``SqliteEventStore.query``."""

    events: list[Event]
    #: The bound to pass back to continue (``after_id`` ascending, ``before_id`` descending),
    #: or None when the requested range is exhausted.
    cursor: int | None


# -- the store ------------------------------------------------------------------------------
class SqliteEventStore:
    """An ``EventStore`` keeping every event in SQLite; an event is visible once committed.

    Group commit, leader style. ``append`` only queues (no I/O; it runs under the bus lock).
    A publisher waiting for its event while nobody is writing becomes the writer: it takes
    everything queued and commits it in one transaction. Publishers arriving meanwhile queue
    behind it, and the first of them to wake commits all of theirs in the next transaction.
    One writer at a time, batches in id order. A lone publisher thus pays one commit and no
    thread hand-off (waking a dedicated writer thread and being woken back measured 40 to
    150 us on a 2-core VM, several times the commit itself).

    A maintenance thread prunes (retention), retries a batch whose commit failed, commits
    anything queued that nobody waits for, and checkpoints the WAL (copies it into the
    database file) on a connection of its own: SQLite's default, a checkpoint inside the
    commit that crosses 1000 WAL pages, made that publisher wait 10-20 ms for the copy and
    its fsync, and added ~2 us to every event's share of a commit. Retained ids are always one contiguous
    range ``oldest_id..last_id``: commits add to its top, pruning removes from its bottom.
    """

    #: Rows deleted per pruning transaction: small, so that a publisher never waits long behind it.
    PRUNE_CHUNK = 1000
    #: Ids one ``query`` call scans at most, so that a rare filter over a huge log stays a short call.
    QUERY_SCAN = 100_000
    #: Read-only connections at most; a reader beyond that waits for one (reads are short).
    READERS = 4
    #: The most a page of ``read_after`` or ``query`` holds (``memory_of`` its events; a page
    #: always holds one event, however large), so that a reader of big events holds a few of
    #: them at a time, not 512 or 1000.
    PAGE_BYTES = 1 << 20
    #: Slots the recent-event ring starts with; it doubles up to ``cache_events`` as needed.
    INITIAL_CACHE_SLOTS = 1024
    #: Pause before retrying a failed commit; doubles per consecutive failure up to the max.
    MIN_RETRY_S, MAX_RETRY_S = 0.05, 5.0
    #: Commits after which the maintenance thread checkpoints (it also does at its next tick).
    CHECKPOINT_COMMITS = 500
    #: A WAL this long (pages) gets a RESTART checkpoint, which holds commits back for the
    #: little the passive ones left to copy, so that the WAL starts again from its beginning:
    #: passive checkpoints beside a steady stream of commits never quite finish.
    CHECKPOINT_RESTART_PAGES = 2000

    def __init__(self, path: Path, *, retention_events: int = DEFAULT_RETENTION_EVENTS,
                 retention_age_s: float = DEFAULT_RETENTION_AGE_S, cache_events: int = 65536,
                 cache_bytes: int = 16 << 20, synchronous: str = "normal", clock: Callable[[], float] = time.time,
                 maintenance_interval_s: float = 1.0):
        if retention_events < 1 or retention_age_s <= 0 or cache_events < 1 or cache_bytes < 1:
            raise ValueError("retention_events, retention_age_s, cache_events and cache_bytes must be positive")
        self.path = Path(path)
        self.synchronous = synchronous
        self._retention_events = retention_events
        # Prune by count only once the excess is worth a transaction (at most 1 % of the limit).
        self._prune_slack = max(1, min(256, retention_events // 100))
        self._retention_age_s = retention_age_s
        self._clock = clock
        self._maintenance_interval_s = maintenance_interval_s
        self._db = open_database(self.path, synchronous=synchronous)
        try:
            self._db.execute("PRAGMA wal_autocheckpoint = 0")  # the maintenance thread checkpoints
            migrate(self._db, COMPONENT, MIGRATIONS, self.path)
            last, oldest, oldest_ts = self._load_positions()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise EventLogError(f"cannot read the event log in {self.path}: {exc} "
                                "(run `cheetahclaws daemon doctor`)") from None
        except BaseException:
            self._db.close()
            raise

        self._lock = threading.Lock()
        # Publishers wait on one of two conditions, so that each is woken about once: those
        # whose events the current write turn holds, and those queued since (one of whom is
        # woken to lead the next turn). The conditions swap roles when a turn takes a batch.
        self._this_turn = threading.Condition(self._lock)
        self._next_turn = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)  # wakes the maintenance thread
        self._maintenance_awaits_turn = False
        self._pending_events: list[Event] = []
        self._pending_rows: list[Row] = []
        #: When the maintenance thread should commit what is queued if no publisher has.
        self._pending_due_at = 0.0
        self._writing = False
        self._writing_upto = last
        self._assigned = self._visible = last
        self._oldest, self._oldest_ts = oldest, oldest_ts
        # The cache: a ring holding ids ``_cache_start.._visible`` at slot ``id % len(_cache)``,
        # with each one's ``memory_of`` beside it (0 in empty slots) and their sum. It starts
        # small and grows to ``cache_events`` slots as events arrive (``_grow_cache``).
        self._cache_slots = cache_events
        self._cache: list[Event | None] = [None] * min(cache_events, self.INITIAL_CACHE_SLOTS)
        self._cache_sizes = [0] * len(self._cache)
        self._cache_bytes = 0
        self._cache_budget = cache_bytes
        self._cache_start = last + 1  # the cache never holds anything older than this process's events
        self._failure: str | None = None
        self._retry_delay = self.MIN_RETRY_S
        self._prune_retry_at = 0.0
        self._commits = self._committed = 0  # since open: how well group commit batches
        self._checkpointer: sqlite3.Connection | None = None  # the maintenance thread's own connection
        self._checkpointed_commits = 0
        self._checkpoint_at = 0.0  # the next tick's checkpoint, if anything was committed
        self._closing = False
        self._closed = False
        self._on_visible: Callable[[], None] = lambda: None

        self._pool = threading.Condition()
        self._idle_readers: list[sqlite3.Connection] = []
        self._reader_count = 0
        self._pool_closed = False

        self._maintenance = threading.Thread(target=self._run_maintenance, name="ccd-eventlog", daemon=True)
        self._maintenance.start()
        log.info("event log %s: ids %d..%d retained (synchronous=%s)", self.path, oldest, last, synchronous)

    def _load_positions(self) -> tuple[int, int, float | None]:
        low, high = self._db.execute("SELECT min(id), max(id) FROM events").fetchone()
        meta = self._db.execute("SELECT value FROM event_log_meta WHERE key = 'last_id'").fetchone()
        last = max(high or 0, meta[0] if meta else 0)
        if low is None:
            return last, last + 1, None
        (oldest_ts,) = self._db.execute("SELECT ts FROM events WHERE id = ?", (low,)).fetchone()
        return last, low, oldest_ts

    # -- EventStore: publishing ---------------------------------------------------------------
    def attach(self, on_visible: Callable[[], None]) -> None:
        self._on_visible = on_visible

    def append(self, event: Event) -> None:
        self.append_many((event,))

    def append_many(self, events: Sequence[Event]) -> None:
        rows = [event_row(event) for event in events]  # encoded here: bad data fails its publisher, not a batch
        with self._lock:
            if self._failure is not None:
                raise EventNotDurable(f"the event log cannot store events: {self._failure}")
            if self._closing:
                raise EventNotDurable("the event log is closed")
            if events[0].id != self._assigned + 1 or events[-1].id != events[0].id + len(events) - 1:
                raise ValueError(f"event ids {events[0].id}..{events[-1].id} do not follow {self._assigned}")
            if not self._pending_rows:
                self._pending_due_at = time.monotonic() + self._maintenance_interval_s
            self._pending_events.extend(events)
            self._pending_rows.extend(rows)
            self._assigned = events[-1].id

    def last_assigned_id(self) -> int:
        return self._assigned

    def wait_visible(self, event_id: int, timeout: float | None = None) -> bool:
        if event_id <= self._visible:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        made_visible = False
        try:
            with self._lock:
                while event_id > self._visible:
                    # A failing log answers at once: the publisher's HTTP thread is not held hostage.
                    if self._failure is not None:
                        raise EventNotDurable(f"event {event_id} could not be stored: {self._failure}")
                    if self._closed or event_id > self._assigned:
                        return False
                    if not self._writing:
                        made_visible = self._write_pending() or made_visible
                        continue
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    turn = self._this_turn if event_id <= self._writing_upto else self._next_turn
                    turn.wait(remaining)
                return True
        finally:
            if made_visible:
                self._on_visible()

    # -- writing: called with the lock held -----------------------------------------------------
    @contextmanager
    def _write_turn(self, upto: int) -> Iterator[None]:
        """The body runs as the one writer, with the lock released; it is held again after.
        ``upto``: the last id the turn stores (``last_id()`` when it stores none)."""
        self._writing = True
        self._writing_upto = upto
        if upto > self._visible:
            self._this_turn, self._next_turn = self._next_turn, self._this_turn
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._writing = False
            self._this_turn.notify_all()
            self._next_turn.notify()
            if self._maintenance_awaits_turn:
                self._work.notify()

    def _wake_all_waiters(self) -> None:
        self._this_turn.notify_all()
        self._next_turn.notify_all()

    def _write_pending(self) -> bool:
        """Commit everything queued in one transaction; True when it became visible."""
        events, rows = self._pending_events, self._pending_rows
        if not rows:
            return False
        self._pending_events, self._pending_rows = [], []
        retrying = self._failure is not None
        try:
            with self._write_turn(events[-1].id):
                self._insert(rows, retrying)
        except Exception as exc:
            self._requeue(events, rows, exc)
            return False
        self._make_visible(events, rows)
        return True

    def _insert(self, rows: list[Row], retrying: bool) -> None:
        db = self._db
        if retrying:
            # An I/O error after SQLite wrote the commit record can leave a failed commit
            # stored after all: skip what is there, so the retry neither duplicates nor loses.
            (stored,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
            rows = [row for row in rows if row[0] > stored]
        try:
            db.execute("BEGIN")
            insert_rows(db, rows)
            db.execute("COMMIT")
        except BaseException:
            rollback_quietly(db)
            raise

    def _requeue(self, events: list[Event], rows: list[Row], error: Exception) -> None:
        """A commit failed: keep its events first in line, refuse new ones until a retry succeeds."""
        self._pending_events[:0] = events
        self._pending_rows[:0] = rows
        if self._failure is None:
            log.error("event log %s: cannot store %d event(s) (%s: %s); publishing is refused and the "
                      "write retried until it succeeds", self.path, len(rows), type(error).__name__, error)
        else:
            self._retry_delay = min(self._retry_delay * 2, self.MAX_RETRY_S)
        self._failure = f"{type(error).__name__}: {error}"
        self._pending_due_at = time.monotonic() + self._retry_delay
        self._wake_all_waiters()  # they answer False at once
        self._work.notify()

    def _make_visible(self, events: list[Event], rows: list[Row]) -> None:
        self._cache_batch(events, rows)
        if self._oldest > self._visible:  # the log was empty: this batch starts it
            self._oldest_ts = events[0].ts
        self._visible = events[-1].id
        self._commits += 1
        self._committed += len(events)
        if self._retention_due() or self._commits - self._checkpointed_commits == self.CHECKPOINT_COMMITS:
            self._work.notify()
        if self._failure is not None:
            log.warning("event log %s: storing events again (%s cleared)", self.path, self._failure)
            self._failure = None
            self._retry_delay = self.MIN_RETRY_S

    def _cache_batch(self, events: list[Event], rows: list[Row]) -> None:
        """Put a committed batch in the ring over the oldest events, then drop more of the
        oldest while the cache is over its byte budget; the newest stays, however large."""
        self._grow_cache(events[-1].id - self._cache_start + 1)
        capacity = len(self._cache)
        events = events[-capacity:]
        sizes = [memory_of(row[DATA]) for row in rows[-capacity:]]
        lo = events[0].id % capacity
        fit = capacity - lo  # slots before the ring wraps around to slot 0
        if len(events) <= fit:
            self._cache_run(lo, events, sizes)
        else:
            self._cache_run(lo, events[:fit], sizes[:fit])
            self._cache_run(0, events[fit:], sizes[fit:])
        last = events[-1].id
        self._cache_start = max(self._cache_start, last - capacity + 1)
        if self._cache_bytes > self._cache_budget:
            self._evict_over_budget(last)

    def _grow_cache(self, wanted: int) -> None:
        """Make the ring hold ``wanted`` events if ``cache_events`` allows, at least doubling it.

        Two rings of 65,536 slots are 1 MB that an idle daemon, or one with short-lived
        sessions, never fills; growing by doubling keeps the copying O(1) per event.
        """
        capacity = len(self._cache)
        if wanted <= capacity or capacity == self._cache_slots:
            return
        grown = min(self._cache_slots, max(wanted, 2 * capacity))
        cache: list[Event | None] = [None] * grown
        sizes = [0] * grown
        for event_id in range(self._cache_start, self._visible + 1):
            cache[event_id % grown] = self._cache[event_id % capacity]
            sizes[event_id % grown] = self._cache_sizes[event_id % capacity]
        self._cache, self._cache_sizes = cache, sizes

    def _cache_run(self, lo: int, events: list[Event], sizes: list[int]) -> None:
        """Put ``events`` in slots ``lo`` on (without wrapping), in place of what was there.
        Slice assignments, not a loop per event: this runs for every commit."""
        hi = lo + len(events)
        self._cache_bytes += sum(sizes) - sum(self._cache_sizes[lo:hi])
        self._cache[lo:hi], self._cache_sizes[lo:hi] = events, sizes

    def _evict_over_budget(self, last: int) -> None:
        """Drop the oldest cached events until the rest fit the byte budget or only ``last`` is left."""
        cache, sizes, capacity = self._cache, self._cache_sizes, len(self._cache)
        first, excess = self._cache_start, self._cache_bytes - self._cache_budget
        while excess > 0 and first < last:
            slot = first % capacity
            excess -= sizes[slot]
            cache[slot], sizes[slot] = None, 0
            first += 1
        self._cache_start = first
        self._cache_bytes = self._cache_budget + excess

    # -- EventStore: reading ------------------------------------------------------------------
    def last_id(self) -> int:
        return self._visible

    def oldest_id(self) -> int:
        return self._oldest

    def read_after(self, after_id: int, limit: int) -> list[Event]:
        with self._lock:
            start = max(after_id + 1, self._oldest)
            stop = min(self._visible, start + limit - 1)
            if start > stop:
                return []
            if start >= self._cache_start:
                return self._cached_page(start, stop)
        with self._reader() as db:
            events, _ = read_rows(db.execute(f"SELECT {COLUMNS} FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
                                             (start, stop)), self.PAGE_BYTES)
        return events

    def _cached_page(self, start: int, stop: int) -> list[Event]:
        """Cached events ``start..stop``, as many of the first as fit in ``PAGE_BYTES`` (one at
        least); the lock is held."""
        capacity = len(self._cache)
        lo, hi = start % capacity, stop % capacity + 1
        if lo < hi:
            page, sizes = self._cache[lo:hi], self._cache_sizes[lo:hi]
        else:  # the range wraps around the end of the ring
            page, sizes = self._cache[lo:] + self._cache[:hi], self._cache_sizes[lo:] + self._cache_sizes[:hi]
        if sum(sizes) > self.PAGE_BYTES:
            del page[max(1, bisect_right(list(accumulate(sizes)), self.PAGE_BYTES)):]
        return page

    def query(self, *, after_id: int = 0, before_id: int | None = None, types: Sequence[str] = (),
              session_id: str | None = None, since_ts: float | None = None, until_ts: float | None = None,
              limit: int = 100, descending: bool = False) -> QueryPage:
        """Visible events with ``after_id < id < before_id`` matching every filter given.

        ``since_ts`` is inclusive, ``until_ts`` exclusive. One call scans at most
        ``QUERY_SCAN`` ids, so a page may hold fewer than ``limit`` events and still have a
        cursor: keep paging until the cursor is None.
        """
        with self._lock:
            low = max(after_id, self._oldest - 1)
            high = self._visible + 1 if before_id is None else min(before_id, self._visible + 1)
        if high - low <= 1:
            return QueryPage([], None)
        if descending:
            window = (max(low, high - self.QUERY_SCAN - 1), high)
        else:
            window = (low, min(high, low + self.QUERY_SCAN + 1))
        clauses, params = ["id > ?", "id < ?"], list(window)
        if types:
            clauses.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        for clause, value in (("session_id = ?", session_id), ("ts >= ?", since_ts), ("ts < ?", until_ts)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        sql = (f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(clauses)} "
               f"ORDER BY id {'DESC' if descending else 'ASC'} LIMIT ?")
        with self._reader() as db:
            events, cut = read_rows(db.execute(sql, (*params, limit)), self.PAGE_BYTES)
        if cut or len(events) == limit:
            cursor: int | None = events[-1].id
        elif descending:
            cursor = window[0] + 1 if window[0] > low else None
        else:
            cursor = window[1] - 1 if window[1] < high else None
        return QueryPage(events, cursor)

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection for one read; WAL readers and the writer never block each other."""
        with self._pool:
            while True:
                if self._pool_closed:
                    raise EventLogError("the event log is closed")
                if self._idle_readers:
                    db: sqlite3.Connection | None = self._idle_readers.pop()
                    break
                if self._reader_count < self.READERS:
                    self._reader_count += 1
                    db = None
                    break
                self._pool.wait()
        if db is None:
            try:
                db = open_database(self.path, read_only=True)
            except BaseException:
                with self._pool:
                    self._reader_count -= 1
                    self._pool.notify()
                raise
        try:
            yield db
        finally:
            with self._pool:
                if self._pool_closed:
                    db.close()
                else:
                    self._idle_readers.append(db)
                    self._pool.notify()

    # -- health -------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            ok = self._failure is None and not self._closing and self._maintenance.is_alive()
            detail = {"ok": ok, "last_id": self._visible, "oldest_id": self._oldest,
                      "pending": len(self._pending_rows), "failure": self._failure,
                      "synchronous": self.synchronous, "commits": self._commits, "events_committed": self._committed,
                      "cached_events": self._visible - self._cache_start + 1, "cached_bytes": self._cache_bytes}
        return ok, detail

    def integrity_check(self) -> list[str]:
        """SQLite's integrity check of the live database, and the schema check; [] when sound."""
        with self._reader() as db:
            return integrity_problems(db) + schema_problems(db, self.path)

    # -- the maintenance thread ---------------------------------------------------------------
    def _run_maintenance(self) -> None:
        try:
            while self._maintenance_step():
                pass
        except Exception:
            log.exception("event log %s: the maintenance thread stopped", self.path)
            with self._lock:
                self._failure = self._failure or "the event log's maintenance thread stopped"
                self._wake_all_waiters()
        finally:
            self._finish()

    def _maintenance_step(self) -> bool:
        """Retry or commit what is due, else prune one chunk, else checkpoint, else sleep;
        False once closing."""
        made_visible = checkpoint = False
        with self._lock:
            if self._closing:
                return False
            now = time.monotonic()
            if self._checkpoint_due(now):  # needs no write turn: first, or a busy log starves it
                self._checkpointed_commits = self._commits
                self._checkpoint_at = now + self._maintenance_interval_s
                checkpoint = True
            elif self._writing:
                self._await_turn_end()
            elif self._pending_rows and now >= self._pending_due_at:
                made_visible = self._write_pending()
            elif self._retention_due():
                self._prune_step()
            else:
                wake_at = now + self._maintenance_interval_s
                if self._pending_rows:
                    wake_at = min(wake_at, self._pending_due_at)
                if self._commits > self._checkpointed_commits:
                    wake_at = min(wake_at, self._checkpoint_at)
                self._work.wait(max(0.0, wake_at - now))
        if made_visible:
            self._on_visible()
        if checkpoint:
            self._checkpoint()
        return True

    def _checkpoint_due(self, now: float) -> bool:
        since = self._commits - self._checkpointed_commits
        return since >= self.CHECKPOINT_COMMITS or (since > 0 and now >= self._checkpoint_at)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file beside the commits (publishers do not wait for
        it), restarting the WAL once it is long; runs without the lock."""
        try:
            if self._checkpointer is None:
                self._checkpointer = open_database(self.path, synchronous=self.synchronous)
            _, wal_pages, _ = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if wal_pages >= self.CHECKPOINT_RESTART_PAGES:
                self._checkpointer.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except (sqlite3.Error, EventLogError) as exc:
            log.warning("event log %s: checkpoint failed (%s); retrying in %.0f s", self.path, exc, self.MAX_RETRY_S)
            with self._lock:
                self._checkpoint_at = time.monotonic() + self.MAX_RETRY_S

    def _await_turn_end(self) -> None:
        self._maintenance_awaits_turn = True
        try:
            self._work.wait(self._maintenance_interval_s)
        finally:
            self._maintenance_awaits_turn = False

    def _finish(self) -> None:
        """Store what is still queued, then close the database for good."""
        with self._lock:
            while self._writing:
                self._await_turn_end()
            made_visible = self._write_pending()
            lost = len(self._pending_rows)
            self._writing = True  # nobody writes again
        if lost:
            log.error("event log %s: %d event(s) could not be stored before closing (%s); their publishers "
                      "were told", self.path, lost, self._failure)
        if self._checkpointer is not None:
            self._checkpointer.close()
        try:
            # Fold the WAL into the main file, so that a stopped daemon leaves one self-contained file.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("event log %s: final checkpoint failed: %s", self.path, exc)
        self._db.close()
        with self._lock:
            self._closed = True
            self._wake_all_waiters()
        if made_visible:
            self._on_visible()

    # -- retention: called with the lock held -------------------------------------------------
    def _retention_due(self) -> bool:
        """Is there anything to prune? Answered from memory."""
        if time.monotonic() < self._prune_retry_at:
            return False
        if self._visible - self._oldest + 1 - self._retention_events >= self._prune_slack:
            return True
        return self._oldest_ts is not None and self._oldest_ts < self._clock() - self._retention_age_s

    def _prune_step(self) -> None:
        """Delete at most ``PRUNE_CHUNK`` of the oldest events that retention no longer keeps."""
        oldest, oldest_ts, visible = self._oldest, self._oldest_ts, self._visible
        try:
            with self._write_turn(visible):
                bound, new_oldest_ts = self._delete_expired(oldest, oldest_ts, visible)
        except sqlite3.Error as exc:
            log.warning("event log %s: pruning failed (%s); retrying in %.0f s", self.path, exc, self.MAX_RETRY_S)
            self._prune_retry_at = time.monotonic() + self.MAX_RETRY_S
            return
        self._oldest, self._oldest_ts = bound, new_oldest_ts

    def _delete_expired(self, oldest: int, oldest_ts: float | None, visible: int) -> tuple[int, float | None]:
        """Runs as the writer: delete the expired prefix (one chunk); returns the new oldest id and its ts."""
        db = self._db
        keep_from = max(visible - self._retention_events + 1, self._first_young_id(oldest, oldest_ts))
        bound = min(keep_from, oldest + self.PRUNE_CHUNK)
        if bound <= oldest:
            return oldest, oldest_ts
        try:
            db.execute("BEGIN")
            db.execute("DELETE FROM events WHERE id < ?", (bound,))
            db.execute(SET_META, ("last_id", visible))
            db.execute("COMMIT")
        except BaseException:
            rollback_quietly(db)
            raise
        row = db.execute("SELECT ts FROM events WHERE id = ?", (bound,)).fetchone()
        return bound, row[0] if row else None

    def _first_young_id(self, oldest: int, oldest_ts: float | None) -> int:
        """The first id from ``oldest`` up that is young enough to keep (looking one chunk
        ahead at most). Retention removes a prefix, so retained ids stay contiguous even if
        the clock stepped back."""
        cutoff = self._clock() - self._retention_age_s
        if oldest_ts is None or oldest_ts >= cutoff:
            return oldest
        rows = self._db.execute("SELECT id, ts FROM events WHERE id >= ? ORDER BY id LIMIT ?",
                                (oldest, self.PRUNE_CHUNK)).fetchall()
        for event_id, ts in rows:
            if ts >= cutoff:
                return event_id
        return rows[-1][0] + 1 if rows else oldest

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Store everything appended so far, then release the database. Idempotent."""
        with self._lock:
            self._closing = True
            self._work.notify()
        self._maintenance.join()
        with self._pool:
            self._pool_closed = True
            idle, self._idle_readers = self._idle_readers, []
            self._pool.notify_all()
        for db in idle:
            db.close()


def rollback_quietly(db: sqlite3.Connection) -> None:
    """Roll back an open transaction; a failure here only means there is nothing to undo."""
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass
