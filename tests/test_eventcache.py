"""The event log's recent-event ring on its own: its count and byte bounds, growth and pages.

Through the store (and against a model) it is tested in test_eventlog; here each rule of
``EventCache`` is shown directly, with sizes chosen by the test.
"""

from __future__ import annotations

from cc_daemon.eventcache import EventCache
from cc_daemon.events import Event


def events(first: int, last: int) -> list[Event]:
    return [Event(event_id, 0.0, "x", {}) for event_id in range(first, last + 1)]


def ids(page: list[Event]) -> list[int]:
    return [event.id for event in page]


def test_a_new_cache_starts_after_the_last_committed_id_and_holds_nothing():
    cache = EventCache(41, max_events=8, max_bytes=100, initial_slots=4)
    assert (cache.start, len(cache), cache.bytes) == (42, 0, 0)


def test_the_ring_grows_up_to_its_count_bound_then_keeps_the_newest():
    cache = EventCache(0, max_events=16, max_bytes=10_000, initial_slots=4)
    for event_id in range(1, 17):  # one at a time: 4 slots, then 8, then 16
        cache.add(events(event_id, event_id), [10])
        assert (cache.start, len(cache), cache.bytes) == (1, event_id, 10 * event_id)
    cache.add(events(17, 20), [10] * 4)
    assert (cache.start, len(cache), cache.bytes) == (5, 16, 160)
    assert ids(cache.page(5, 20, 10_000)) == list(range(5, 21))


def test_a_batch_larger_than_the_ring_leaves_its_newest_events():
    cache = EventCache(0, max_events=4, max_bytes=10_000, initial_slots=4)
    cache.add(events(1, 10), list(range(1, 11)))
    assert (cache.start, len(cache), cache.bytes) == (7, 4, 7 + 8 + 9 + 10)
    assert ids(cache.page(7, 10, 10_000)) == [7, 8, 9, 10]


def test_a_page_across_the_end_of_the_ring_comes_back_in_id_order():
    cache = EventCache(0, max_events=4, max_bytes=10_000, initial_slots=4)
    cache.add(events(1, 6), [1] * 6)  # ids 3..6 in slots 3, 0, 1, 2
    assert ids(cache.page(3, 6, 10_000)) == [3, 4, 5, 6]
    assert ids(cache.page(4, 5, 10_000)) == [4, 5]


def test_over_the_byte_budget_the_oldest_go_and_the_newest_stays_however_large():
    cache = EventCache(0, max_events=8, max_bytes=25, initial_slots=8)
    cache.add(events(1, 3), [10, 10, 10])
    assert (cache.start, len(cache), cache.bytes) == (2, 2, 20)
    cache.add(events(4, 4), [100])
    assert (cache.start, len(cache), cache.bytes) == (4, 1, 100)
    cache.add(events(5, 5), [5])
    assert (cache.start, len(cache), cache.bytes) == (5, 1, 5)


def test_a_page_holds_what_fits_in_its_bytes_and_always_its_first_event():
    cache = EventCache(0, max_events=8, max_bytes=10_000, initial_slots=8)
    cache.add(events(1, 4), [30, 30, 30, 30])
    assert ids(cache.page(1, 4, 120)) == [1, 2, 3, 4]
    assert ids(cache.page(1, 4, 119)) == [1, 2, 3]
    assert ids(cache.page(2, 4, 10)) == [2]
