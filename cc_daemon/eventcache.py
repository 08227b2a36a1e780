"""The event log's in-memory cache of its newest committed events, bounded by count and by bytes.

Owns: a ring holding ids ``start..last`` at slot ``id % capacity``, with each event's
size beside it (0 in empty slots) and their sum; growing the ring by doubling up to its
count bound; evicting the oldest events while the sum is over the byte budget (the newest
stays, however large); pages of cached events bounded by bytes.

Must not: touch the database, decide what an event costs (the caller passes each size), or
lock: its one user, the event log, calls it with its own lock held.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from .events import Event


class EventCache:
    """The newest committed events, ids ``start..last``; ``len()`` of them, ``bytes`` in size."""

    def __init__(self, last: int, max_events: int, max_bytes: int, initial_slots: int):
        """``last``: the newest id committed before; the cache never holds anything older
        than the events added to it. The ring starts with ``initial_slots`` and grows to
        ``max_events`` slots as events arrive (``_grow``)."""
        self._max_events = max_events
        self._events: list[Event | None] = [None] * min(max_events, initial_slots)
        self._sizes = [0] * len(self._events)
        self.bytes = 0
        self._budget = max_bytes
        self.start = last + 1
        self._last = last

    def __len__(self) -> int:
        return self._last - self.start + 1

    def add(self, events: list[Event], sizes: list[int]) -> None:
        """Put newly committed ``events`` (the ids after ``last``, each of ``sizes``) in the
        ring over the oldest events, then drop more of the oldest while the cache is over its
        byte budget; the newest stays, however large."""
        self._grow(events[-1].id - self.start + 1)
        capacity = len(self._events)
        events, sizes = events[-capacity:], sizes[-capacity:]
        lo = events[0].id % capacity
        fit = capacity - lo  # slots before the ring wraps around to slot 0
        if len(events) <= fit:
            self._run(lo, events, sizes)
        else:
            self._run(lo, events[:fit], sizes[:fit])
            self._run(0, events[fit:], sizes[fit:])
        last = self._last = events[-1].id
        self.start = max(self.start, last - capacity + 1)
        if self.bytes > self._budget:
            self._evict_over_budget(last)

    def page(self, start: int, stop: int, max_bytes: int) -> list[Event]:
        """Cached events ``start..stop`` (``start`` at least ``self.start``), as many of the
        first as fit in ``max_bytes`` (one at least)."""
        capacity = len(self._events)
        lo, hi = start % capacity, stop % capacity + 1
        if lo < hi:
            page, sizes = self._events[lo:hi], self._sizes[lo:hi]
        else:  # the range wraps around the end of the ring
            page, sizes = self._events[lo:] + self._events[:hi], self._sizes[lo:] + self._sizes[:hi]
        if sum(sizes) > max_bytes:
            del page[max(1, bisect_right(list(accumulate(sizes)), max_bytes)):]
        return page

    def _grow(self, wanted: int) -> None:
        """Make the ring hold ``wanted`` events if ``max_events`` allows, at least doubling it.

        Two rings of 65,536 slots are 1 MB that an idle daemon, or one with short-lived
        sessions, never fills; growing by doubling keeps the copying O(1) per event.
        """
        capacity = len(self._events)
        if wanted <= capacity or capacity == self._max_events:
            return
        grown = min(self._max_events, max(wanted, 2 * capacity))
        events: list[Event | None] = [None] * grown
        sizes = [0] * grown
        for event_id in range(self.start, self._last + 1):
            events[event_id % grown] = self._events[event_id % capacity]
            sizes[event_id % grown] = self._sizes[event_id % capacity]
        self._events, self._sizes = events, sizes

    def _run(self, lo: int, events: list[Event], sizes: list[int]) -> None:
        """Put ``events`` in slots ``lo`` on (without wrapping), in place of what was there.
        Slice assignments, not a loop per event: this runs for every commit."""
        hi = lo + len(events)
        self.bytes += sum(sizes) - sum(self._sizes[lo:hi])
        self._events[lo:hi], self._sizes[lo:hi] = events, sizes

    def _evict_over_budget(self, last: int) -> None:
        """Drop the oldest cached events until the rest fit the byte budget or only ``last`` is left."""
        events, sizes, capacity = self._events, self._sizes, len(self._events)
        first, excess = self.start, self.bytes - self._budget
        while excess > 0 and first < last:
            slot = first % capacity
            excess -= sizes[slot]
            events[slot], sizes[slot] = None, 0
            first += 1
        self.start = first
        self.bytes = self._budget + excess
