"""The event bus: ordered, replayable events and the subscriptions that read them.

Owns: assigning event ids (integers that only grow), handing events to a store, and
reading them back for subscribers in id order. A subscription is only a cursor into the
log, never a private queue: a slow reader costs no memory and never blocks a publisher;
when the store has already evicted what the cursor points at, the reader is told so with
an exact ``gap`` instead of a silent hole. Replay and the live tail are the same loop, so
events published during a replay are neither lost nor delivered twice.

Must not: render SSE frames or know about HTTP (the transport does that), decide who may
see what (``Event.as_dict`` takes the viewer and hides the originator's secret id from
everyone else).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring_ascii
from typing import Any, Callable, Iterable, Protocol, Sequence

#: Synthetic event types: produced per subscriber, never stored.
GAP = "gap"
SHUTDOWN = "shutdown"
#: A gap's reason when retention removed the ids: the reference's word, so that its clients'
#: checks match (the only reason there is today).
PRUNED_BY_RETENTION = "retention_prune"


@dataclass(frozen=True, slots=True)
class Originator:
    """Who caused an event.

    The daemon never keeps a client id itself (it is its holder's secret): ``client_key``
    is a keyed hash of it that recognises the holder and is useless to anyone else, and
    ``client_ref`` is a shorter public handle that frontends may show and compare.
    """

    client_key: str
    client_ref: str
    kind: str | None = None

    def public(self) -> dict[str, Any]:
        return {"client_ref": self.client_ref, "kind": self.kind}

    def is_held_by(self, viewer: Any) -> bool:
        """True when ``viewer`` (anything with ``client_key``) is this originator."""
        key = getattr(viewer, "client_key", None)
        return key is not None and hmac.compare_digest(key, self.client_key)


class Event:
    """One published event. Immutable once published."""

    __slots__ = ("id", "ts", "type", "data", "session_id", "originator", "_public_json")

    def __init__(self, id: int, ts: float, type: str, data: dict[str, Any],
                 session_id: str | None = None, originator: Originator | None = None):
        self.id = id
        self.ts = ts
        self.type = type
        self.data = data
        self.session_id = session_id
        self.originator = originator
        self._public_json: str | None = None

    def as_dict(self, viewer: Any = None) -> dict[str, Any]:
        """The event as ``viewer`` sees it (anything with ``client_id`` and ``client_key``,
        or None): ``originator.client_id`` appears only in the originator's own copy."""
        out: dict[str, Any] = {"id": self.id, "ts": self.ts, "type": self.type, "data": self.data}
        if self.session_id is not None:
            out["session_id"] = self.session_id
        if self.originator is not None:
            originator = self.originator.public()
            if self.originator.is_held_by(viewer):
                originator["client_id"] = viewer.client_id
            out["originator"] = originator
        return out

    def to_json(self, viewer: Any = None) -> str:
        """Compact JSON for ``viewer``.

        The public rendering is computed once and kept, shared by every stream that shows it.
        The originator's own is made per call: it is usually read by one stream only, and
        keeping it too would hold a third copy of the data of every cached event (the event
        log's cache budget counts the data and one rendering).
        """
        if self.originator is not None and self.originator.is_held_by(viewer):
            return compact_json(self.as_dict(viewer))
        if self._public_json is None:
            self._public_json = compact_json(self.as_dict())
        return self._public_json

    def __repr__(self) -> str:
        return f"Event(id={self.id}, type={self.type!r})"


def strict_compact_encoder() -> Callable[[Any], str]:
    """A compact JSON encoder refusing NaN and infinities (``ValueError``) and non-JSON types
    (``TypeError``).

    ``JSONEncoder.encode`` builds a new C encoder on every call, which costs more than encoding
    a typical event (2.1 us against 0.9 us): this one is built once and called directly. It
    skips the circular-reference check, so data containing itself fails with RecursionError
    rather than ValueError; event data is parsed JSON or built by the daemon, never
    self-containing.
    """
    strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
    if c_make_encoder is None:  # an interpreter without the C accelerator
        return strict.encode
    encode = c_make_encoder(None, strict.default, encode_basestring_ascii, None, ":", ",", False, False, False)
    return lambda value: "".join(encode(value, 0))


compact_json = strict_compact_encoder()


@dataclass(frozen=True, slots=True)
class Gap:
    """Ids ``missed_from..missed_to`` (inclusive) can no longer be delivered to a subscriber."""

    missed_from: int
    missed_to: int
    reason: str

    def as_event(self, ts: float) -> Event:
        # The gap carries the last missed id so that a client resuming after it asks for
        # what follows the hole, not for the hole again.
        return Event(self.missed_to, ts, GAP, {
            "missed_from": self.missed_from, "missed_to": self.missed_to, "reason": self.reason})


class EventStore(Protocol):
    """Where published events live.

    Ids are handed out by the bus; a store may make an event *visible* (readable by
    subscribers) later than it is appended, e.g. once it is durable. Subscribers only ever
    read visible events, so no reader sees an id that a crash could take back.
    """

    def append(self, event: Event) -> None:
        """Accept the next event (id = ``last_assigned_id() + 1``). Called with the bus lock
        held: it must not block on I/O."""
        ...

    def append_many(self, events: Sequence[Event]) -> None:
        """``append`` for consecutive events, all or none."""
        ...

    def last_assigned_id(self) -> int: ...

    def last_id(self) -> int:
        """The newest visible id."""
        ...

    def oldest_id(self) -> int:
        """The smallest id still retained (``last_id() + 1`` when nothing is retained)."""
        ...

    def read_after(self, after_id: int, limit: int) -> list[Event]:
        """Visible retained events with ids greater than ``after_id``, ascending, at most
        ``limit`` (a store may return fewer to bound a page's bytes, but at least one when
        there is one). Thread-safe; called without the bus lock."""
        ...

    def wait_visible(self, event_id: int, timeout: float | None = None) -> bool:
        """Block until ``event_id`` is visible (durable); False on timeout or when closed.
        A store that knows why it failed raises ``EventNotDurable`` saying so."""
        ...

    def attach(self, on_visible: Callable[[], None]) -> None:
        """Register the bus's wake-up, called (without any store lock held) whenever more
        events became visible asynchronously."""
        ...

    def close(self) -> None: ...


class MemoryEventStore:
    """A fixed-size ring of the most recent events; older ones are evicted.

    Events are visible as soon as they are appended. Ids are contiguous in the ring, so a
    read is index arithmetic, never a scan.
    """

    def __init__(self, capacity: int = 65536, last_id: int = 0):
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._slots: list[Event | None] = [None] * capacity
        self._capacity = capacity
        self._last = last_id
        self._first_ever = last_id + 1
        self._lock = threading.Lock()

    def append(self, event: Event) -> None:
        self.append_many((event,))

    def append_many(self, events: Sequence[Event]) -> None:
        with self._lock:
            for event in events:
                assert event.id == self._last + 1, "ids must be contiguous"
                self._slots[event.id % self._capacity] = event
                self._last = event.id

    def last_assigned_id(self) -> int:
        return self._last

    def last_id(self) -> int:
        return self._last

    def oldest_id(self) -> int:
        return max(self._first_ever, self._last - self._capacity + 1)

    def read_after(self, after_id: int, limit: int) -> list[Event]:
        with self._lock:
            start = max(after_id + 1, self.oldest_id())
            stop = min(self._last, start + limit - 1)
            slots, capacity = self._slots, self._capacity
            return [slots[i % capacity] for i in range(start, stop + 1)]  # type: ignore[misc]

    def wait_visible(self, event_id: int, timeout: float | None = None) -> bool:
        return event_id <= self._last

    def attach(self, on_visible: Callable[[], None]) -> None:
        pass  # appends are visible at once; the bus wakes readers itself

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class EventFilter:
    """Server-side filter of a subscription; empty means everything."""

    types: frozenset[str] = frozenset()
    session_id: str | None = None

    def accepts(self, event: Event) -> bool:
        if self.types and event.type not in self.types:
            return False
        return self.session_id is None or event.session_id == self.session_id


class BusClosed(RuntimeError):
    """The bus is shutting down and accepts no more events."""


class EventNotDurable(RuntimeError):
    """The store failed to persist an event (disk full, I/O error)."""


class EventBus:
    """Assigns ids, stores events and wakes subscriptions. Thread-safe."""

    #: How many events a subscription takes from the store per wake-up.
    PAGE = 512

    def __init__(self, store: EventStore | None = None, clock=time.time, durable_timeout_s: float = 30.0):
        self._store: EventStore = store if store is not None else MemoryEventStore()
        self._clock = clock
        self._durable_timeout_s = durable_timeout_s
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[], None]] = []
        #: Events published since start, by type (the daemon's own names: a bounded set).
        self._published: dict[str, int] = {}
        self._store.attach(self._wake)

    def add_listener(self, on_news: Callable[[], None]) -> None:
        """Call ``on_news`` whenever subscriptions are woken: events became visible, some were
        ended, or the bus closed. It runs with the bus lock held, so it must only take note
        (set a flag, notify its own condition), never block or call back into the bus."""
        with self._cond:
            self._listeners.append(on_news)

    def _notify(self) -> None:
        """Wake every reader; the bus lock is held."""
        self._cond.notify_all()
        for on_news in self._listeners:
            on_news()

    def _wake(self) -> None:
        with self._cond:
            self._notify()

    # -- publishing -------------------------------------------------------------------
    def publish(self, type: str, data: dict[str, Any], *, session_id: str | None = None,
                originator: Originator | None = None) -> Event:
        """Publish an event; returns once the store made it visible (durable, for a durable
        store), so an acknowledged call never loses its event."""
        return self.publish_many([(type, data)], session_id=session_id, originator=originator)[0]

    def publish_many(self, items: Iterable[tuple[str, dict[str, Any]]], *, session_id: str | None = None,
                     originator: Originator | None = None) -> list[Event]:
        """Publish ``(type, data)`` pairs as consecutive events, all or none, with one wait for
        the store: a burst (a runtime's output) costs one commit and one wake-up, not one per
        event. Returns once every one of them is visible (durable)."""
        with self._cond:
            if self._closed:
                raise BusClosed("event bus is closed")
            first_id, now = self._store.last_assigned_id() + 1, self._clock()
            events = [Event(first_id + offset, now, type, data, session_id, originator)
                      for offset, (type, data) in enumerate(items)]
            if not events:
                return events
            self._store.append_many(events)
            for event in events:
                self._published[event.type] = self._published.get(event.type, 0) + 1
            # A durable store makes events visible later and wakes the readers itself
            # (``attach``); waking them now too would only make every one of them look twice.
            if self._store.last_id() >= events[-1].id:
                self._notify()
        if not self._store.wait_visible(events[-1].id, self._durable_timeout_s):
            raise EventNotDurable(f"events {first_id}..{events[-1].id} could not be stored")
        return events

    def last_id(self) -> int:
        with self._cond:
            return self._store.last_id()

    def oldest_id(self) -> int:
        with self._cond:
            return self._store.oldest_id()

    # -- subscribing ------------------------------------------------------------------
    def subscribe(self, since: int | None = None, event_filter: EventFilter | None = None) -> Subscription:
        """A cursor after ``since`` (None: only events published from now on)."""
        with self._cond:
            # An id from the future (another data dir, a hand-typed number) must not make the
            # reader skip the events that will carry those ids: start from "now" instead.
            now = self._store.last_id()
            start = now if since is None else min(since, now)
            subscription = Subscription(self, start, event_filter or EventFilter())
            self._subscriptions.add(subscription)
            if self._closed:
                subscription.end_reason = SHUTDOWN
        return subscription

    @property
    def subscriber_count(self) -> int:
        with self._cond:
            return len(self._subscriptions)

    def max_lag(self) -> int:
        """How many events the furthest-behind subscription has yet to be offered."""
        with self._cond:
            last = self._store.last_id()
            return max((last - subscription.cursor for subscription in self._subscriptions), default=0)

    def published_counts(self) -> dict[str, int]:
        with self._cond:
            return dict(self._published)

    def close(self) -> None:
        """Refuse new events and end every subscription with ``shutdown`` (after each has
        been offered everything already published). The store is closed by its owner."""
        with self._cond:
            self._closed = True
            for subscription in self._subscriptions:
                subscription.end_reason = subscription.end_reason or SHUTDOWN
            self._notify()

    def end_subscriptions(self, predicate, reason: str) -> int:
        """End the subscriptions for which ``predicate(subscription)`` holds; returns how many."""
        with self._cond:
            ended = [s for s in self._subscriptions if s.end_reason is None and predicate(s)]
            for subscription in ended:
                subscription.end_reason = reason
            self._notify()
        return len(ended)

    def _forget(self, subscription: Subscription) -> None:
        with self._cond:
            self._subscriptions.discard(subscription)


class Subscription:
    """A reader's position in the log. Not thread-safe: one reader thread at a time owns it
    (ownership may be handed over, as long as the hand-over itself synchronises)."""

    def __init__(self, bus: EventBus, cursor: int, event_filter: EventFilter):
        self._bus = bus
        self.cursor = cursor
        self.filter = event_filter
        self.end_reason: str | None = None
        #: Opaque tag set by whoever opened it (the transport keeps the auth context here).
        self.tag: Any = None

    def next_batch(self, timeout: float) -> list[Event | Gap]:
        """Events after the cursor, waiting up to ``timeout`` s; ``[]`` means nothing came.

        Returns at once with whatever is available. Raises ``SubscriptionEnded`` once the
        bus closes or the subscription is ended, after everything already published was
        offered (so a graceful shutdown loses nothing that was acknowledged).
        """
        bus = self._bus
        deadline = time.monotonic() + timeout
        while True:
            with bus._cond:
                store = bus._store
                while store.last_id() <= self.cursor:
                    if self.end_reason is not None:
                        raise SubscriptionEnded(self.end_reason)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    bus._cond.wait(remaining)
                if self.end_reason is not None and self.end_reason != SHUTDOWN:
                    raise SubscriptionEnded(self.end_reason)
            events = store.read_after(self.cursor, bus.PAGE)
            if not events or events[0].id != self.cursor + 1:
                # The store no longer holds what follows the cursor: say exactly what is gone.
                resume_after = (events[0].id if events else store.oldest_id()) - 1
                if resume_after > self.cursor:
                    gap = Gap(self.cursor + 1, resume_after, PRUNED_BY_RETENTION)
                    self.cursor = resume_after
                    return [gap]
                time.sleep(0.001)  # visible but not yet readable (a store catching up): retry
                continue
            self.cursor = events[-1].id
            wanted = [event for event in events if self.filter.accepts(event)]
            if wanted:
                return wanted

    def resume_after(self, event_id: int) -> None:
        """Deliver from after ``event_id`` on: what a read made on this subscription's behalf
        delivered ends there.

        For reads made outside ``next_batch``: another reader's, from this subscription's
        cursor through its filter (the live tail reads once for every stream at the same
        place), or this subscription's own read of which only the first items were written,
        which leaves the cursor after them so that the rest is read again.
        """
        self.cursor = event_id

    def close(self) -> None:
        self._bus._forget(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SubscriptionEnded(Exception):
    """The subscription will deliver nothing more; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

