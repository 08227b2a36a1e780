"""The durable event log: events kept in SQLite so that nothing acknowledged is ever lost.

Owns: group commit (one writer thread turns a burst of appends into one transaction); the
visible watermark (an event becomes readable only once committed, so no reader ever sees an
id a crash could take back); serving the live tail from the cache of recent events
(``eventcache``) without touching disk; paged reads of older history on separate read-only
connections, each page bounded by bytes too; retention by count and age, pruned by the
writer in small steps; checkpointing the WAL; health and SQLite's integrity check.

Must not: open, version or check the database file other than through ``database`` (the
record tables share the file), nor lay out its tables or rows other than through
``eventtable``; assign ids or decide who may see what (the bus does); know about HTTP or
JSON-RPC; store anything about a client beyond an event's ``Originator`` (keyed hash,
public ref, kind).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .database import DatabaseError, database_problems, migrate, open_database, rollback_quietly
from .eventcache import EventCache
from .events import Event, EventNotDurable
from .eventtable import (COLUMNS, COMPONENT, DATA, MIGRATIONS, SCHEMA_VERSIONS, SET_META, Row, event_row, insert_rows,
                         memory_of, read_rows)

log = logging.getLogger("cc_daemon.eventlog")

DEFAULT_RETENTION_EVENTS = 1_000_000
DEFAULT_RETENTION_AGE_S = 7 * 86400.0


@dataclass(frozen=True)
class QueryPage:
    """One page of ``SqliteEventStore.query``."""

    events: list[Event]
    #: The bound to pass back to continue (``after_id`` ascending, ``before_id`` descending),
    #: or None when the requested range is exhausted.
    cursor: int | None


# -- the store ------------------------------------------------------------------------------
class StorageLost(OSError):
    """The log's file is no longer the one at its path (deleted with its data dir, or replaced)."""


def leave_id_floor(path: Path, last_id: int) -> None:
    """A new database at ``path`` that holds no event, only ``last_id``: the next daemon's
    first event then gets a larger id than any a lost log handed out, so a client resuming
    with an id it saw never skips the new events that would have reused it."""
    db = open_database(path)
    try:
        migrate(db, COMPONENT, MIGRATIONS, path)
        db.execute(SET_META, ("last_id", last_id))
    finally:
        db.close()


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
            raise DatabaseError(f"cannot read the event log in {self.path}: {exc} "
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
        # Sized by ``memory_of``; it never holds anything older than this process's events.
        self._cache = EventCache(last, cache_events, cache_bytes, self.INITIAL_CACHE_SLOTS)
        self._failure: str | None = None
        #: Set once the file behind the log is gone (its data dir deleted): never cleared.
        self._lost: str | None = None
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
        if self._lost is not None:
            # SQLite would commit into the unlinked file without complaint; acknowledging
            # that would be a lie, since the next start cannot find it.
            raise StorageLost(self._lost)
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
        self._cache.add(events, [memory_of(row[DATA]) for row in rows])
        if self._oldest > self._visible:  # the log was empty: this batch starts it
            self._oldest_ts = events[0].ts
        self._visible = events[-1].id
        self._commits += 1
        self._committed += len(events)
        if self._retention_due() or self._commits - self._checkpointed_commits == self.CHECKPOINT_COMMITS:
            self._work.notify()
        if self._failure is not None and self._lost is None:
            log.warning("event log %s: storing events again (%s cleared)", self.path, self._failure)
            self._failure = None
            self._retry_delay = self.MIN_RETRY_S

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
            if start >= self._cache.start:
                return self._cache.page(start, stop, self.PAGE_BYTES)
        with self._reader() as db:
            events, _ = read_rows(db.execute(f"SELECT {COLUMNS} FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
                                             (start, stop)), self.PAGE_BYTES)
        return events

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
                    raise DatabaseError("the event log is closed")
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
    def mark_lost(self, reason: str) -> None:
        """Refuse every publish from now on: the database file was removed or replaced under
        the daemon, so whatever it committed would be gone at the next start. Events queued
        but not yet acknowledged stay unacknowledged (their publishers get the refusal)."""
        with self._lock:
            if self._lost is not None:
                return
            log.error("event log %s: %s; publishing is refused until the daemon is restarted", self.path, reason)
            self._lost = self._failure = reason
            self._wake_all_waiters()

    def health(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            ok = self._failure is None and not self._closing and self._maintenance.is_alive()
            detail = {"ok": ok, "last_id": self._visible, "oldest_id": self._oldest, "oldest_ts": self._oldest_ts,
                      "pending": len(self._pending_rows), "failure": self._failure,
                      "synchronous": self.synchronous, "commits": self._commits, "events_committed": self._committed,
                      "cached_events": len(self._cache), "cached_bytes": self._cache.bytes}
        return ok, detail

    def integrity_check(self) -> list[str]:
        """SQLite's integrity check of the live database, and the schema check; [] when sound."""
        with self._reader() as db:
            return database_problems(db, self.path, SCHEMA_VERSIONS)

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
        except (sqlite3.Error, DatabaseError) as exc:
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

