"""The live tail: one thread that writes every caught-up event stream.

Owns: an event stream from its first replayed event to its goodbye (``LiveTail.follow``,
on the stream's own thread), the shared thread that writes the streams that caught up,
reads shared by streams at the same place (``SharedRead``), and handing a stream back to
its own thread when it falls behind, ends or fails.

Must not: frame SSE itself (``sse`` does) or know about HTTP requests; it is handed a
subscription and a writer.
"""

from __future__ import annotations

import logging
import threading
import time

from ..events import SHUTDOWN, Event, EventBus, EventFilter, Gap, Subscription, SubscriptionEnded, compact_json
from ..metrics import Metrics
from .kernel import leave_signals_to_the_main_thread
from .sse import SseWriter, render_frame

log = logging.getLogger("cc_daemon.transport")


def item_id(item: Event | Gap) -> int:
    """The id a reader's cursor stands at once ``item`` is delivered."""
    return item.missed_to if isinstance(item, Gap) else item.id


class LiveStream:
    """An event stream as the live-tail thread holds it, and what it hands back."""

    __slots__ = ("subscription", "writer", "last_write", "unsent", "failure", "returned")

    def __init__(self, subscription: Subscription, writer: SseWriter):
        self.subscription = subscription
        self.writer = writer
        self.last_write = time.monotonic()
        self.unsent = b""  # bytes of a frame the socket did not take
        self.failure: OSError | None = None
        self.returned = threading.Event()

    def take_back(self) -> None:
        """Back on the stream's own thread: finish what the live tail could not write."""
        failure, unsent = self.failure, self.unsent
        self.failure, self.unsent = None, b""
        if failure is not None:
            raise failure
        if unsent:
            self.writer.send_bytes(unsent)  # blocking, with the connection's send timeout


class SharedRead:
    """What one pass of the live tail read after a cursor through a filter, and its writes.

    Every caught-up stream with the same cursor and filter would read the same items: one of
    them reads, the others take its items, and streams that render them alike (the same
    framing, and the same answer to "is this event's originator me?") share one encoded
    write. A pass then costs one read and one encoding per distinct view, plus one send per
    stream, instead of rendering every event again for every subscriber.
    """

    __slots__ = ("items", "cursor", "_originators", "_writes")

    def __init__(self, items: list[Event | Gap], cursor: int):
        self.items = items
        self.cursor = cursor  # where a reader stands once it took every item
        # The only per-viewer part of a rendering (``Event.to_json``): usually one originator.
        self._originators = tuple(dict.fromkeys(
            item.originator for item in items if isinstance(item, Event) and item.originator is not None))
        self._writes: dict[tuple[bool, tuple[bool, ...]], tuple[bytes, int, int]] = {}

    def write_for(self, writer: SseWriter) -> tuple[bytes, int, int]:
        """The first write of these items as ``writer`` frames them: the bytes, how many items
        they hold, and the cursor after those items."""
        view = (writer.chunked, tuple(originator.is_held_by(writer.viewer) for originator in self._originators))
        write = self._writes.get(view)
        if write is None:
            data, count = writer.encode_events(self.items)
            write = (data, count, self.cursor if count == len(self.items) else item_id(self.items[count - 1]))
            self._writes[view] = write
        return write

    def left_behind(self, visible: int) -> bool:
        """True when a stream of this read has visible events still to read: the read stopped
        at a page or a gap before ``visible``, or a write held only the first items."""
        return self.cursor < visible or any(count < len(self.items) for _, count, _ in self._writes.values())


class LiveTail:
    """One thread that writes the live tail of every caught-up event stream.

    With a thread per stream, every publish woke every subscriber's thread: 64 subscribers
    meant 64 thread switches and GIL hand-offs per event (py-spy: two thirds of the daemon's
    time in ``Condition.notify_all``). A stream's own thread still replays history and
    handles whatever is slow or final; once its cursor reaches the newest event it hands the
    stream here (``_serve``) and sleeps. On news from the bus this thread reads each stream's
    next events and writes them without blocking; streams at the same place read and render
    them once (``SharedRead``). A stream whose socket is full, that ended, or whose write
    failed goes back to its own thread, with the bytes not yet written.
    """

    #: Heartbeats go out in passes every quarter period, to streams silent for 3/4 of it,
    #: so that thousands of idle streams cost a few wake-ups per period, not one each.
    HEARTBEAT_PASSES = 4
    #: Passes are at least this far apart, so that a fast publisher's events go out several
    #: to a write: one system call per stream per pass, on our side and on the reader's.
    COALESCE_S = 0.002

    def __init__(self, bus: EventBus, metrics: Metrics, heartbeat_s: float):
        self._bus = bus
        self._metrics = metrics
        self._heartbeat_s = heartbeat_s
        self._cond = threading.Condition(threading.Lock())
        self._news = False
        self._arrivals: list[LiveStream] = []
        self._streams: list[LiveStream] = []  # only the live-tail thread touches this list
        self._delivered = 0  # events written in the current pass
        self._stopped = False
        self._thread: threading.Thread | None = None
        bus.add_listener(self._on_news)

    def _on_news(self) -> None:
        with self._cond:
            self._news = True
            self._cond.notify()

    def follow(self, subscription: Subscription, writer: SseWriter) -> None:
        """Write an event stream to its end, from the calling thread (the stream's own).

        Replay and catch up here; once caught up, the shared live-tail thread writes the
        stream until it falls behind or ends, and this thread takes over again.
        """
        live = LiveStream(subscription, writer)
        while True:
            if subscription.cursor >= self._bus.last_id() and self._serve(live):
                live.take_back()
            try:
                batch = subscription.next_batch(self._heartbeat_s)
            except SubscriptionEnded as ended:
                if ended.reason == SHUTDOWN:
                    writer.send(render_frame(None, SHUTDOWN, compact_json(
                        {"ts": time.time(), "type": SHUTDOWN, "data": {"reason": "graceful"}})))
                writer.finish()
                return
            if not batch:
                writer.send(":\n\n")
                continue
            writer.send_events(batch)
            self._metrics.inc("ccd_events_delivered_total", len(batch))
            self._metrics.inc("ccd_events_replayed_total", len(batch))
            gaps = sum(1 for item in batch if isinstance(item, Gap))
            if gaps:
                self._metrics.inc("ccd_gaps_total", gaps)

    def _serve(self, stream: LiveStream) -> bool:
        """Write ``stream`` from the live-tail thread until it comes back (then True), or
        False at once when the live tail is stopped."""
        with self._cond:
            if self._stopped:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ccd-live-tail", daemon=True)
                self._thread.start()
            stream.returned.clear()
            self._arrivals.append(stream)
            self._cond.notify()
        stream.returned.wait()
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        try:
            self._loop()
        except Exception:
            log.exception("the live-tail thread stopped; event streams go on from their own threads")
        finally:
            with self._cond:
                self._stopped = True
                streams, self._streams, self._arrivals = self._streams + self._arrivals, [], []
            for stream in streams:
                stream.returned.set()

    def _loop(self) -> None:
        pass_every = self._heartbeat_s / self.HEARTBEAT_PASSES
        next_heartbeat = time.monotonic() + pass_every
        last_pass = 0.0
        while True:
            wait = last_pass + self.COALESCE_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._cond:
                if not (self._news or self._arrivals or self._stopped):
                    self._cond.wait(max(0.0, next_heartbeat - time.monotonic()))
                if self._stopped:
                    return
                news, self._news = self._news, False
                arrivals, self._arrivals = self._arrivals, []
            now = last_pass = time.monotonic()
            heartbeat = now >= next_heartbeat
            if heartbeat:
                next_heartbeat = now + pass_every
            self._pass(arrivals, now, news, heartbeat)

    def _pass(self, arrivals: list[LiveStream], now: float, news: bool, heartbeat: bool) -> None:
        """Write every stream's news (or heartbeat) once; streams that go back are dropped."""
        reads: dict[tuple[int, EventFilter], SharedRead] = {}
        visible = self._bus.last_id()
        # New arrivals are read even without news: an event may have become visible
        # between their last read and their arrival here.
        self._streams = [stream for stream in self._streams
                         if self._advance(stream, reads if news else None, now, heartbeat)]
        self._streams.extend(stream for stream in arrivals if self._advance(stream, reads, now, heartbeat))
        if any(read.left_behind(visible) for read in reads.values()):  # another pass, without news
            with self._cond:
                self._news = True
        if self._delivered:
            self._metrics.inc("ccd_events_delivered_total", self._delivered)
            self._delivered = 0

    def _advance(self, stream: LiveStream, reads: dict | None, now: float, heartbeat: bool) -> bool:
        """Write ``stream``'s news (or a heartbeat); False when it went back to its own thread."""
        keep = self._write(stream, reads, now, heartbeat)
        if not keep:
            stream.returned.set()
        return keep

    def _write(self, stream: LiveStream, reads: dict | None, now: float, heartbeat: bool) -> bool:
        subscription = stream.subscription
        try:
            data, count = self._news_for(stream, reads) if reads is not None else (b"", 0)
        except SubscriptionEnded:
            return False  # its own thread ends the stream
        if not data:
            if not (heartbeat and now - stream.last_write >= self._heartbeat_s * 0.75):
                return subscription.end_reason is None
            data = stream.writer.encode(":\n\n")
        try:
            sent = stream.writer.send_without_waiting(data)
        except OSError as exc:
            stream.failure = exc
            return False
        stream.last_write = now
        self._delivered += count
        if sent < len(data):
            stream.unsent = data[sent:]
            return False
        # An ended stream goes back once what was read is written: its own thread offers
        # the rest (after a graceful shutdown) and says goodbye.
        return subscription.end_reason is None

    @staticmethod
    def _news_for(stream: LiveStream, reads: dict[tuple[int, EventFilter], SharedRead]) -> tuple[bytes, int]:
        """The next write of ``stream`` and how many items it holds (``b""``: nothing new)."""
        subscription = stream.subscription
        key = (subscription.cursor, subscription.filter)
        # An ended subscription reads for itself: ``next_batch`` knows what it may still offer.
        read = reads.get(key) if subscription.end_reason is None else None
        if read is None:
            items = subscription.next_batch(0)
            read = reads[key] = SharedRead(items, subscription.cursor)
        if not read.items:
            subscription.resume_after(read.cursor)  # a filtered stream also moves past what it skipped
            return b"", 0
        data, count, cursor = read.write_for(stream.writer)
        # The stream took these items as its own read would have: from the same cursor through
        # the same filter (if more became visible since, the news of it brings another pass).
        # A write that holds only the first items leaves the cursor after them.
        subscription.resume_after(cursor)
        return data, count
