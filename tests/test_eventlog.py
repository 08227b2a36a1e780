"""The durable event log: the store on its own, a model-based stateful test, and the daemon over the wire."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import sqlite3
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cc_daemon.database import SchemaTooNew, check_database, migrate, open_database
from cc_daemon.eventlog import SqliteEventStore
from cc_daemon.events import Event, EventBus, EventFilter, EventNotDurable, Gap, Originator, compact_json
from cc_daemon.eventtable import COMPONENT, MIGRATIONS, memory_of
from helpers.clock import FakeClock
from helpers.daemons import cli, wait_for
from helpers.sse import open_stream, publish, take

ALICE = Originator("a" * 64, "ref-alice", "repl")
#: A viewer holding ALICE's key, as the transport's caller does.
ALICE_VIEWER = SimpleNamespace(client_key="a" * 64, client_id="cid-alice")
MB = 1 << 20


def open_log(path: Path, **options) -> tuple[SqliteEventStore, EventBus]:
    clock = options.pop("clock", None)
    store = SqliteEventStore(path, maintenance_interval_s=0.01, **({"clock": clock} if clock else {}), **options)
    bus = EventBus(store, **({"clock": clock} if clock else {}))
    return store, bus


def drain(bus: EventBus, since: int, event_filter: EventFilter | None = None) -> list[Event | Gap]:
    """Everything a subscriber after ``since`` receives up to the current last id."""
    out: list[Event | Gap] = []
    with bus.subscribe(since, event_filter) as subscription:
        # Everything is visible already, so a short wait only ends a tail the filter emptied.
        while subscription.cursor < bus.last_id():
            out.extend(subscription.next_batch(0.05))
    return out


# -- the store --------------------------------------------------------------------------------
def test_published_events_survive_a_restart_with_originator_and_session(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db")
    bus.publish("turn", {"text": "hi", "n": [1, 2]}, session_id="s1", originator=ALICE)
    bus.publish("ping_received", {})
    store.close()
    store, bus = open_log(tmp_path / "daemon.db", cache_events=1)
    first, second = store.read_after(0, 10)
    assert (first.id, first.type, first.data, first.session_id, first.originator) == (
        1, "turn", {"text": "hi", "n": [1, 2]}, "s1", ALICE)
    assert (second.id, second.session_id, second.originator) == (2, None, None)
    assert bus.publish("after", {}).id == 3
    store.close()


def test_nothing_about_a_client_but_its_originator_fields_is_stored(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db")
    bus.publish("turn", {}, originator=ALICE)
    store.close()
    db = sqlite3.connect(tmp_path / "daemon.db")
    columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
    assert [c for c in columns if c.startswith("client")] == ["client_key", "client_ref", "client_kind"]
    assert db.execute("SELECT client_key, client_ref, client_kind FROM events").fetchone() == (
        ALICE.client_key, ALICE.client_ref, ALICE.kind)
    db.close()


def test_database_file_is_private_and_in_wal_mode(tmp_path):
    store, _ = open_log(tmp_path / "daemon.db")
    assert (tmp_path / "daemon.db").stat().st_mode & 0o777 == 0o600
    assert sqlite3.connect(tmp_path / "daemon.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()


def test_an_event_is_readable_only_once_committed(tmp_path):
    store = SqliteEventStore(tmp_path / "daemon.db", maintenance_interval_s=60)
    store.append(Event(1, time.time(), "x", {}))
    assert store.last_assigned_id() == 1
    assert (store.last_id(), store.read_after(0, 10)) == (0, [])
    assert store.wait_visible(1, 5)
    assert [e.id for e in store.read_after(0, 10)] == [1]
    store.close()


def test_a_burst_is_stored_in_far_fewer_transactions_than_events(tmp_path):
    # A long maintenance interval: only publishers commit, so every transaction is counted here.
    store = SqliteEventStore(tmp_path / "daemon.db", maintenance_interval_s=60)
    bus = EventBus(store)

    def publisher(n: int) -> None:
        for i in range(n):
            bus.publish("chunk", {"i": i})

    threads = [threading.Thread(target=publisher, args=(100,)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, detail = store.health()
    assert detail["events_committed"] == bus.last_id() == 1600
    assert detail["commits"] < 1600 / 2, detail
    # Appends queued together (as a burst arrives while a commit runs) share one transaction.
    for i in range(500):
        store.append(Event(store.last_assigned_id() + 1, time.time(), "chunk", {"i": i}))
    commits_before = store.health()[1]["commits"]
    assert store.wait_visible(store.last_assigned_id(), 5)
    assert store.health()[1]["commits"] == commits_before + 1
    store.close()


def test_data_that_is_not_json_fails_its_publisher_and_nothing_else(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db")
    bus.publish("ok", {})
    with pytest.raises(ValueError):
        bus.publish("bad", {"x": float("nan")})
    assert bus.publish("ok", {}).id == 2
    assert [e.type for e in store.read_after(0, 10)] == ["ok", "ok"]
    store.close()


def test_ids_never_go_back_even_when_retention_removed_everything(tmp_path):
    clock = FakeClock()
    store, bus = open_log(tmp_path / "daemon.db", clock=clock, retention_age_s=60)
    for i in range(5):
        bus.publish("x", {"i": i})
    clock.now += 61
    wait_for(lambda: store.oldest_id() == 6, message="everything aged out")
    assert store.read_after(0, 10) == []
    store.close()
    store, bus = open_log(tmp_path / "daemon.db", clock=clock, retention_age_s=60)
    assert (store.last_id(), store.oldest_id()) == (5, 6)
    assert drain(bus, 2) == [Gap(3, 5, "retention_prune")]
    assert bus.publish("x", {}).id == 6
    store.close()


def test_count_retention_prunes_a_prefix_in_small_steps(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db", retention_events=100)
    store.PRUNE_CHUNK = 7
    for i in range(300):
        bus.publish("x", {"i": i})
    wait_for(lambda: store.oldest_id() == 201, message="pruned to the last 100")
    events = store.read_after(0, 1000)
    assert [e.id for e in events] == list(range(201, 301))
    assert drain(bus, 0)[0] == Gap(1, 200, "retention_prune")
    store.close()


def test_age_retention_keeps_young_events_and_ids_contiguous_when_the_clock_steps_back(tmp_path):
    clock = FakeClock()
    store, bus = open_log(tmp_path / "daemon.db", clock=clock, retention_age_s=100)
    bus.publish("old", {})
    clock.now -= 50  # a clock stepping back makes event 2 look older than event 1
    bus.publish("older-looking", {})
    clock.now += 60
    bus.publish("young", {})
    clock.now += 95  # event 1 (age 105) expired, 2 (age 145) too, 3 (age 95) not
    wait_for(lambda: store.oldest_id() == 3, message="expired prefix pruned")
    assert [e.type for e in store.read_after(0, 10)] == ["young"]
    store.close()


def test_replay_reads_older_events_from_disk_and_the_tail_from_memory(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db", cache_events=8)
    for i in range(50):
        bus.publish("x" if i % 2 else "y", {"i": i}, session_id=f"s{i % 3}")
    assert [e.data["i"] for e in drain(bus, 0)] == list(range(50))
    only_x = drain(bus, 0, EventFilter(types=frozenset({"x"})))
    assert [e.data["i"] for e in only_x] == list(range(1, 50, 2))
    session = drain(bus, 10, EventFilter(session_id="s1"))
    assert [e.id for e in session] == [i + 1 for i in range(10, 50) if i % 3 == 1]
    store.close()


def test_a_long_replay_uses_bounded_memory(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db", cache_events=256)
    payload = "x" * 200
    total, now = 40_000, time.time()
    for i in range(total):
        store.append(Event(i + 1, now, "chunk", {"i": i, "text": payload}, "s1", ALICE))
    assert store.wait_visible(total, 60)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen = 0
        with bus.subscribe(0) as subscription:
            while subscription.cursor < total:
                seen += len(subscription.next_batch(1.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total
    # The whole log decoded would be ~40 MB; a replay holds one page (512 events) at a time.
    assert peak - baseline < 3 * 1024 * 1024, f"replay peaked at {(peak - baseline) / 1e6:.1f} MB"
    store.close()


# -- byte bounds: the cache and every page --------------------------------------------------------
def cache_state(store: SqliteEventStore) -> tuple[int, int]:
    _, detail = store.health()
    return detail["cached_events"], detail["cached_bytes"]


def newest_that_fit(sizes: list[int], max_count: int, max_bytes: int) -> int:
    """How many of the newest ``sizes`` a bounded cache holds: as many as fit both bounds, one at least."""
    count, total = 0, 0
    for size in reversed(sizes[-max_count:]):
        if total + size > max_bytes:
            break
        count, total = count + 1, total + size
    return max(1, count) if sizes else 0


def text_events(bus: EventBus, lengths: list[int]) -> list[Event]:
    return bus.publish_many([("chunk", {"text": "x" * length}) for length in lengths])


def test_big_events_are_cached_within_the_byte_budget_and_an_oversized_one_alone(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db", cache_bytes=10_000)
    for _ in range(10):
        text_events(bus, [1000])
    size = memory_of(compact_json({"text": "x" * 1000}))
    assert cache_state(store) == (10_000 // size, 10_000 // size * size)
    text_events(bus, [20_000])
    assert cache_state(store) == (1, memory_of(compact_json({"text": "x" * 20_000})))
    text_events(bus, [10])  # the oversized one goes as soon as anything follows it
    assert cache_state(store) == (1, memory_of(compact_json({"text": "x" * 10})))
    assert [e.id for e in drain(bus, 0)] == list(range(1, 13))  # the rest comes from disk
    store.close()


def test_a_stream_of_big_events_holds_no_more_memory_than_the_cache_budget(tmp_path):
    """90 MB of 60 KB chunks once held 180 MB (every event's data and its rendering); now the
    cache keeps at most its budget of both, whoever reads the events."""
    store, bus = open_log(tmp_path / "daemon.db", cache_bytes=4 * MB)
    public = bus.subscribe(0)
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        for i in range(200):  # 10 MB of text
            bus.publish("text_chunk", {"text": f"{i:08d}" + "x" * 50_000}, originator=ALICE)
            for event in public.next_batch(0):
                event.to_json(None)  # the rendering other frontends share, kept on the event
                event.to_json(ALICE_VIEWER)  # the originator's own, made per call
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    public.close()
    assert cache_state(store)[1] <= 4 * MB
    assert held - baseline < 5 * MB, f"{(held - baseline) / MB:.1f} MB held after 10 MB of events"
    store.close()


def test_the_originators_rendering_is_made_per_call_and_the_public_one_shared(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db")
    event = bus.publish("turn", {"text": "hi"}, session_id="s1", originator=ALICE)
    own = event.to_json(ALICE_VIEWER)
    assert own == compact_json(event.as_dict(ALICE_VIEWER)) and '"client_id":"cid-alice"' in own
    assert event.to_json(ALICE_VIEWER) is not own
    public = event.to_json(None)
    assert public == compact_json(event.as_dict()) and "client_id" not in public
    assert event.to_json(SimpleNamespace(client_key="b" * 64, client_id="cid-bob")) is public
    store.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_compact_json_is_jsons_strict_compact_encoding(value):
    assert compact_json(value) == json.dumps(value, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("value, error", [({"x": float("nan")}, ValueError), ([float("inf")], ValueError),
                                          ({"x": {1, 2}}, TypeError), (object(), TypeError)])
def test_compact_json_refuses_what_is_not_json(value, error):
    with pytest.raises(error):
        compact_json(value)


def expected_page(sizes: list[int], after: int, limit: int, max_bytes: int) -> list[int]:
    """The ids a page after ``after`` holds: up to ``limit``, within ``max_bytes``, one at least."""
    ids, total = [], 0
    for event_id in range(after + 1, min(len(sizes), after + limit) + 1):
        total += sizes[event_id - 1]
        if total > max_bytes and ids:
            break
        ids.append(event_id)
    return ids


def check_pages(store: SqliteEventStore, sizes: list[int], limit: int) -> None:
    for after in range(len(sizes)):
        page = store.read_after(after, limit)
        assert [e.id for e in page] == expected_page(sizes, after, limit, store.PAGE_BYTES)
        assert all(memory_of(compact_json(e.data)) == sizes[e.id - 1] for e in page)


def check_query_paging(store: SqliteEventStore, count: int, limit: int, descending: bool) -> None:
    found, bound = [], None
    while True:
        page = store.query(limit=limit, descending=descending,
                           **({"before_id" if descending else "after_id": bound} if bound is not None else {}))
        assert 1 <= len(page.events) <= limit or page.cursor is None
        sizes = [memory_of(compact_json(e.data)) for e in page.events]
        assert len(sizes) <= 1 or sum(sizes) <= store.PAGE_BYTES
        found.extend(e.id for e in page.events)
        if page.cursor is None:
            break
        bound = page.cursor
    assert found == (list(range(count, 0, -1)) if descending else list(range(1, count + 1)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(st.integers(0, 3000), min_size=1, max_size=6), min_size=1, max_size=8),
       cache_events=st.integers(1, 12), cache_bytes=st.integers(1, 15_000), page_bytes=st.integers(1, 9000),
       limit=st.integers(1, 8), descending=st.booleans(), initial_slots=st.integers(1, 12))
@example(batches=[[10, 10, 10], [10], [10] * 6], cache_events=8, cache_bytes=15_000, page_bytes=9000, limit=8,
         descending=False, initial_slots=1)  # the ring grows twice while it holds events, then wraps
def test_the_cache_and_every_page_keep_to_their_byte_bounds_and_replay_stays_exact(
        batches, cache_events, cache_bytes, page_bytes, limit, descending, initial_slots):
    root = Path(tempfile.mkdtemp(prefix="ccd-bytes-"))
    with mock.patch.object(SqliteEventStore, "INITIAL_CACHE_SLOTS", initial_slots):  # the ring grows as it fills
        store, bus = open_log(root / "daemon.db", cache_events=cache_events, cache_bytes=cache_bytes)
    try:
        store.PAGE_BYTES = page_bytes
        sizes: list[int] = []  # memory_of each id's data
        for lengths in batches:
            sizes += [memory_of(compact_json(e.data)) for e in text_events(bus, lengths)]
            cached, cached_bytes = cache_state(store)
            assert cached == newest_that_fit(sizes, cache_events, cache_bytes)
            assert cached_bytes == sum(sizes[-cached:]) and (cached_bytes <= cache_bytes or cached == 1)
        check_pages(store, sizes, limit)  # from the cache where it can, from disk before that
        assert [(e.id, len(e.data["text"])) for e in drain(bus, 0)] == \
            [(i + 1, length) for i, length in enumerate(length for lengths in batches for length in lengths)]
        check_query_paging(store, len(sizes), limit, descending)
        store.close()
        store, bus = open_log(root / "daemon.db", cache_events=cache_events, cache_bytes=cache_bytes)
        store.PAGE_BYTES = page_bytes
        assert cache_state(store) == (0, 0)
        check_pages(store, sizes, limit)  # all from disk
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def test_query_filters_and_pages_both_ways(tmp_path):
    clock = FakeClock(1000.0)
    store, bus = open_log(tmp_path / "daemon.db", clock=clock)
    for i in range(30):
        clock.now = 1000.0 + i
        bus.publish("a" if i % 2 else "b", {"i": i}, session_id="s" if i % 5 == 0 else None)
    page = store.query(types=["a"], limit=4)
    assert [e.data["i"] for e in page.events] == [1, 3, 5, 7] and page.cursor == 8
    page = store.query(after_id=page.cursor, types=["a"], limit=100)
    assert [e.data["i"] for e in page.events] == list(range(9, 30, 2)) and page.cursor is None
    page = store.query(session_id="s", descending=True, limit=2)
    assert [e.data["i"] for e in page.events] == [25, 20] and page.cursor == 21
    assert [e.data["i"] for e in store.query(session_id="s", descending=True, before_id=21).events] == [15, 10, 5, 0]
    assert [e.data["i"] for e in store.query(since_ts=1010.0, until_ts=1013.0).events] == [10, 11, 12]
    store.close()


def test_query_scans_a_bounded_range_per_call_and_says_where_to_go_on(tmp_path):
    store, bus = open_log(tmp_path / "daemon.db")
    store.QUERY_SCAN = 10
    for i in range(35):
        bus.publish("rare" if i == 30 else "common", {})
    page = store.query(types=["rare"])
    assert (page.events, page.cursor) == ([], 10)
    cursors, found = [], []
    while page.cursor is not None:
        page = store.query(after_id=page.cursor, types=["rare"])
        cursors.append(page.cursor)
        found.extend(e.id for e in page.events)
    assert found == [31] and cursors == [20, 30, None]
    back = store.query(types=["common"], descending=True, before_id=31, limit=3)
    assert ([e.id for e in back.events], back.cursor) == ([30, 29, 28], 28)
    back = store.query(types=["rare"], descending=True, before_id=31)
    assert (back.events, back.cursor) == ([], 21)
    store.close()


# -- failures -----------------------------------------------------------------------------------
def fill_the_disk(store: SqliteEventStore) -> None:
    """Cap the database at its current size: the next commit that needs a page gets SQLITE_FULL."""
    store._db.execute("PRAGMA max_page_count = 1")  # clamped to the current page count


def free_the_disk(store: SqliteEventStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_fails_publishers_clearly_and_the_log_recovers_without_loss(tmp_path, caplog):
    store, bus = open_log(tmp_path / "daemon.db")
    bus.publish("before", {})
    fill_the_disk(store)
    with caplog.at_level(logging.ERROR, logger="cc_daemon.eventlog"):
        with pytest.raises(EventNotDurable):
            bus.publish("during", {"pad": "x" * 20000})
    assert "database or disk is full" in caplog.text
    ok, detail = store.health()
    assert not ok and "full" in detail["failure"]
    with pytest.raises(EventNotDurable, match="cannot store events"):
        bus.publish("refused", {})  # refused at once, no id consumed
    assert store.last_id() == 1
    free_the_disk(store)
    wait_for(lambda: store.health()[0], message="the retry succeeding")
    # The event whose publisher was told "not durable" is stored once, where it was queued.
    assert [e.type for e in store.read_after(0, 10)] == ["before", "during"]
    assert bus.publish("after", {}).id == 3
    store.close()


def test_closing_stores_everything_already_appended(tmp_path):
    store, now = SqliteEventStore(tmp_path / "daemon.db", maintenance_interval_s=60), time.time()
    for i in range(10):
        store.append(Event(i + 1, now, "x", {"i": i}))
    store.close()
    assert store.last_id() == 10 and store.wait_visible(10, 1)
    store = SqliteEventStore(tmp_path / "daemon.db")
    assert store.last_id() == 10
    store.close()


# -- schema -------------------------------------------------------------------------------------
def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path):
    SqliteEventStore(tmp_path / "daemon.db").close()
    db = sqlite3.connect(tmp_path / "daemon.db")
    db.execute("UPDATE schema_version SET version = 99 WHERE component = ?", (COMPONENT,))
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew, match="version 99.*only knows versions up to 1.*upgrade cc_daemon"):
        SqliteEventStore(tmp_path / "daemon.db")
    assert any("newer than this cc_daemon knows" in p for p in check_database(tmp_path / "daemon.db"))


def test_migrations_run_forward_once_each_and_per_component(tmp_path):
    path = tmp_path / "daemon.db"
    db = open_database(path)
    v1 = ("CREATE TABLE notes (id INTEGER PRIMARY KEY)",)
    v2 = ("ALTER TABLE notes ADD COLUMN body TEXT", "INSERT INTO notes (body) VALUES ('migrated')")
    assert migrate(db, "notes", [v1], path) == 1
    assert migrate(db, "notes", [v1, v2], path) == 2
    assert migrate(db, "notes", [v1, v2], path) == 2  # already there: nothing runs twice
    assert db.execute("SELECT body FROM notes").fetchall() == [("migrated",)]
    assert migrate(db, COMPONENT, MIGRATIONS, path) == 1  # other components are versioned apart
    with pytest.raises(SchemaTooNew):
        migrate(db, "notes", [v1], path)
    db.close()


def test_a_failed_migration_step_leaves_the_previous_version(tmp_path):
    path = tmp_path / "daemon.db"
    db = open_database(path)
    migrate(db, "notes", [("CREATE TABLE notes (id INTEGER PRIMARY KEY)",)], path)
    broken = ("ALTER TABLE notes ADD COLUMN body TEXT", "THIS IS NOT SQL")
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, "notes", [("CREATE TABLE notes (id INTEGER PRIMARY KEY)",), broken], path)
    assert db.execute("SELECT version FROM schema_version WHERE component = 'notes'").fetchone() == (1,)
    assert [row[1] for row in db.execute("PRAGMA table_info(notes)")] == ["id"]
    db.close()


# -- the stateful model test ----------------------------------------------------------------
class EventLogMachine(RuleBasedStateMachine):
    """Random publish / age / retention change / restart / replay / query against a plain list.

    The model: every event ever published (id, ts, type, session), and the oldest id the
    retention rules allow, computed the way the contract states them (a prefix by count
    and by age). After every step the store must have converged to exactly that.
    """

    @initialize(retention=st.integers(1, 40), age=st.floats(20, 500), cache=st.integers(1, 16))
    def start(self, retention, age, cache):
        self.root = Path(tempfile.mkdtemp(prefix="ccd-model-"))
        self.clock = FakeClock(10_000.0)
        self.published: list[tuple[int, float, str, str | None]] = []
        self.oldest = 1
        self.open(retention, age, cache)

    def open(self, retention, age, cache):
        self.retention, self.age = retention, age
        self.store, self.bus = open_log(self.root / "daemon.db", clock=self.clock, retention_events=retention,
                                        retention_age_s=age, cache_events=cache)

    def teardown(self):
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def last(self) -> int:
        return len(self.published)

    def expected_oldest(self) -> int:
        by_count = self.last - self.retention + 1
        cutoff = self.clock.now - self.age
        by_age = next((i for i, ts, _, _ in self.published if i >= self.oldest and ts >= cutoff), self.last + 1)
        return max(self.oldest, by_count, by_age)

    @rule(count=st.integers(1, 25), kind=st.sampled_from(["a", "b"]), session=st.sampled_from([None, "s1", "s2"]))
    def publish(self, count, kind, session):
        for _ in range(count):
            event = self.bus.publish(kind, {"n": self.last + 1}, session_id=session)
            assert event.id == self.last + 1, "ids grow by one, across restarts and pruning too"
            self.published.append((event.id, self.clock.now, kind, session))

    @rule(seconds=st.floats(0, 300))
    def time_passes(self, seconds):
        self.clock.now += seconds

    @rule(retention=st.integers(1, 40), age=st.floats(20, 500), cache=st.integers(1, 16))
    def restart(self, retention, age, cache):
        self.store.close()
        self.open(retention, age, cache)

    @precondition(lambda self: self.last > 0)
    @rule(data=st.data(), kind=st.sampled_from([None, "a", "b"]), session=st.sampled_from([None, "s1", "s2"]))
    def replay(self, data, kind, session):
        since = data.draw(st.integers(0, self.last - 1), label="since")
        event_filter = EventFilter(frozenset({kind}) if kind else frozenset(), session)
        received = drain(self.bus, since, event_filter)
        first_kept = max(since + 1, self.oldest)
        if first_kept > since + 1:
            assert received[0] == Gap(since + 1, first_kept - 1, "retention_prune")
            received = received[1:]
        expected = [i for i, _, k, s in self.published[first_kept - 1:]
                    if (kind is None or k == kind) and (session is None or s == session)]
        assert [e.id for e in received] == expected
        assert all(e.data == {"n": e.id} for e in received)

    @precondition(lambda self: self.last > 0)
    @rule(limit=st.integers(1, 30), descending=st.booleans(), kind=st.sampled_from([None, "a"]))
    def query(self, limit, descending, kind):
        found, bound = [], None
        while True:
            page = self.store.query(types=[kind] if kind else (), limit=limit, descending=descending,
                                    **({"before_id" if descending else "after_id": bound} if bound is not None else {}))
            assert len(page.events) <= limit
            found.extend(e.id for e in page.events)
            if page.cursor is None:
                break
            bound = page.cursor
        expected = [i for i, _, k, _ in self.published[self.oldest - 1:] if kind is None or k == kind]
        assert found == (expected[::-1] if descending else expected)

    @invariant()
    def converged_to_the_model(self):
        if not hasattr(self, "store"):
            return
        expected = self.expected_oldest()
        wait_for(lambda: self.store.oldest_id() == expected, 5,
                 message=f"oldest id {expected} (store has {self.store.oldest_id()})")
        self.oldest = expected
        assert (self.store.last_id(), self.store.last_assigned_id()) == (self.last, self.last)
        assert self.store.health()[0]


EventLogMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=12, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_event_log_matches_its_model = EventLogMachine.TestCase


# -- over the wire ------------------------------------------------------------------------------
def test_replay_after_retention_starts_with_the_exact_gap(make_daemon):
    running = make_daemon("tcp", retention_events=5)
    publish(running, 20)
    wait_for(lambda: running.rpc("events.query")["result"]["oldest_id"] == 16, message="pruned to the last 5")
    response, events = open_stream(running, "?since=3")
    gap, first = take(events, 2)
    assert gap["type"] == "gap" and gap["data"] == {"missed_from": 4, "missed_to": 15, "reason": "retention_prune"}
    assert first["id"] == 16
    response.close()


def test_replay_filters_work_on_events_read_from_disk(make_daemon):
    running = make_daemon("unix", event_buffer=2)
    for i in range(12):
        running.daemon.bus.publish("turn" if i % 2 else "note", {"i": i}, session_id=f"s{i % 3}")
    response, events = open_stream(running, "?since=0&types=turn&session=s1")
    assert [e["data"]["i"] for e in take(events, 2)] == [1, 7]
    response.close()


def test_event_buffer_mb_bounds_the_memory_of_the_recent_events(make_daemon):
    running = make_daemon("tcp", event_buffer_mb=0.1)
    for n in range(12):
        assert "result" in running.rpc("echo.ping", {"n": n, "pad": "x" * 20_000})
    detail = running.get("/readyz").json()["event_log"]
    assert detail["cached_bytes"] <= 0.1 * 2**20 and 1 <= detail["cached_events"] < 12
    response, events = open_stream(running, "?since=0&types=ping_received")  # the rest come from disk
    assert [e["data"]["params"]["n"] for e in take(events, 12)] == list(range(12))
    response.close()


def test_events_query_renders_the_originator_for_each_caller(tcp_daemon):
    me = tcp_daemon.post({"jsonrpc": "2.0", "method": "echo.ping", "params": {"n": 1}, "id": 1})
    my_id = me.headers["X-Client-Id"]
    tcp_daemon.rpc("echo.ping", {"n": 2})
    own = tcp_daemon.rpc("events.query", {"types": ["ping_received"]}, client_id=my_id)["result"]
    theirs = tcp_daemon.rpc("events.query", {"types": ["ping_received"], "order": "desc", "limit": 1})["result"]
    assert [e["data"]["params"]["n"] for e in own["events"]] == [1, 2]
    assert own["events"][0]["originator"]["client_id"] == my_id
    assert "client_id" not in own["events"][1]["originator"]
    assert [e["data"]["params"]["n"] for e in theirs["events"]] == [2] and theirs["cursor"] is not None
    assert own["cursor"] is None and own["last_id"] >= 2 and own["oldest_id"] == 1


@pytest.mark.parametrize("params, field", [({"limit": 0}, "limit"), ({"order": "sideways"}, "order"),
                                           ({"types": []}, "types"), ({"after_id": -1}, "after_id"),
                                           ({"color": "red"}, "color")])
def test_events_query_rejects_bad_params_clearly(tcp_daemon, params, field):
    error = tcp_daemon.rpc("events.query", params)["error"]
    assert error["code"] == -32602 and error["data"]["field"] == field


def test_storage_failure_is_an_rpc_error_a_log_line_and_readyz_503(make_daemon):
    running = make_daemon("tcp")
    assert running.get("/readyz").status_code == 200
    fill_the_disk(running.daemon.event_log)
    reply = running.rpc("echo.ping", {"pad": "x" * 50000})
    assert "result" not in reply
    assert reply["error"]["code"] == -32003 and reply["error"]["message"] == "Storage unavailable"
    assert "database or disk is full" in reply["error"]["data"]["reason"]
    refused = running.rpc("echo.ping", {})["error"]  # refused at once while the store is failed
    assert refused["code"] == -32003 and "cannot store events" in refused["data"]["reason"]
    ready = running.get("/readyz")
    assert ready.status_code == 503
    assert not ready.json()["event_log"]["ok"] and "full" in ready.json()["event_log"]["failure"]
    log_text = (running.data_dir / "logs" / "daemon.log").read_text()
    assert "cannot store 1 event(s)" in log_text and "database or disk is full" in log_text
    free_the_disk(running.daemon.event_log)
    wait_for(lambda: running.get("/readyz").status_code == 200, message="readiness after recovery")
    assert "result" in running.rpc("echo.ping", {})


def test_an_unreadable_database_stops_the_start_with_a_message(tmp_path):
    (tmp_path / "daemon.db").write_bytes(b"this is not a database" * 200)
    result = cli("serve", "--data-dir", str(tmp_path), "--listen", "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert "daemon.db" in result.stderr and "doctor" in result.stderr


def test_doctor_reports_a_sound_database_a_damaged_one_and_a_missing_one(tmp_path):
    empty = cli("daemon", "doctor", "--data-dir", str(tmp_path))  # nothing there yet: nothing wrong either
    assert empty.returncode == 0 and "daemon.db yet: the first serve creates it" in empty.stdout
    store, bus = open_log(tmp_path / "daemon.db")
    now = time.time()
    for i in range(2000):
        store.append(Event(i + 1, now, "x", {"text": "y" * 100}))
    assert store.wait_visible(2000, 30)
    sound = cli("daemon", "doctor", "--data-dir", str(tmp_path))  # while the log is open
    store.close()
    assert sound.returncode == 0 and "SQLite's integrity check passed" in sound.stdout, sound.stdout + sound.stderr
    damage_a_table_page(tmp_path / "daemon.db")
    damaged = cli("daemon", "doctor", "--data-dir", str(tmp_path))
    assert damaged.returncode == 1 and "FAIL  database: " in damaged.stdout, damaged.stdout


@pytest.mark.parametrize("component", ["clients", "permission_requests", COMPONENT])
def test_a_newer_schema_of_any_table_stops_serve_cleanly_and_doctor_names_it(subprocess_daemon, component):
    running = subprocess_daemon()
    assert cli("daemon", "stop", "--data-dir", str(running.data_dir)).returncode == 0
    db = sqlite3.connect(running.data_dir / "daemon.db")
    db.execute("UPDATE schema_version SET version = 42 WHERE component = ?", (component,))
    db.commit()
    db.close()
    result = cli("serve", "--data-dir", str(running.data_dir), "--listen", "tcp://127.0.0.1:0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{component} schema version 42" in result.stderr and "upgrade cc_daemon" in result.stderr
    doctor = cli("daemon", "doctor", "--data-dir", str(running.data_dir))
    assert doctor.returncode == 1 and f"{component} schema version 42 is newer" in doctor.stdout


def damage_a_table_page(path: Path) -> None:
    """Scribble over the middle of the file, where the events table's pages are."""
    data = bytearray(path.read_bytes())
    page_size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    middle = (len(data) // page_size // 2) * page_size
    data[middle:middle + page_size] = json.dumps({"garbage": True}).encode().ljust(page_size, b"\xff")
    path.write_bytes(bytes(data))
