"""An event stream that survives drops and daemon restarts.

Owns: following ``/events`` as an iterator of event dicts, reconnecting with
``Last-Event-ID`` and jittered exponential backoff, re-reading the discovery file after a
401 or a failure (a rotated token, a daemon on a new port), surfacing ``gap`` events, and
refusing to resume into a daemon whose event log restarted.

Must not: parse SSE itself (``sseclient-py`` does) or import daemon internals.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .exceptions import (EventGap, EventLogReset, HttpStatusError, NoAnswer, NotRunning, ProtocolError,
                         Unauthenticated, reason_of)

if TYPE_CHECKING:
    import requests

    from .connection import Client

log = logging.getLogger("cc_daemon.client")



def transient_failures() -> tuple[type[BaseException], ...]:
    """Failures after which a stream tries again: the daemon went away or is restarting.
    (``requests`` is imported here, by the first stream, not by every command-line call.)"""
    import requests

    return NotRunning, NoAnswer, requests.RequestException, ConnectionError


class EventStream:
    """An iterator over a daemon's events that survives drops and restarts.

    ``last_id`` is the id of the newest event delivered so far (a ``gap`` counts: it
    carries the last missed id). ``close()`` ends the iteration; it is also a context
    manager. Made by ``Client.events``.
    """

    INITIAL_BACKOFF_S = 0.1

    def __init__(self, client: Client, since: int, *, types: list[str], session: str | None,
                 reconnect: bool, raise_on_gap: bool, max_backoff_s: float, read_timeout: float | None,
                 on_reconnect: Callable[[str], None] | None):
        self._client = client
        self._transient = transient_failures()
        self.last_id: int = since
        self._query = {key: value for key, value in (("types", ",".join(types)), ("session", session or ""))
                       if value}
        self._reconnect = reconnect
        self._raise_on_gap = raise_on_gap
        self._max_backoff_s = max_backoff_s
        self._read_timeout = read_timeout
        self._on_reconnect = on_reconnect or (lambda message: log.info("%s", message))
        self._closed = threading.Event()
        self._response: requests.Response | None = None
        self._frames: Iterator[Any] | None = None
        self._opened_once = False
        self._delivered_since_connect = False
        self._backoff = self.INITIAL_BACKOFF_S
        self._reader: int | None = None

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        self._reader = threading.get_ident()
        while not self._closed.is_set():
            if self._frames is None:
                self._open()
                continue
            try:
                frame = next(self._frames)
            except StopIteration:  # the daemon ended the stream: shutdown, token rotation
                self._drop("the daemon closed the event stream")
                continue
            except self._transient as exc:
                if self._closed.is_set():
                    break
                self._drop(f"event stream lost ({reason_of(exc)})", exc)
                continue
            if self._closed.is_set():  # closed from another thread while this frame was in flight
                break
            event = self._decode(frame)
            self._delivered_since_connect = True
            self._backoff = self.INITIAL_BACKOFF_S
            if event.get("id") is not None:
                self.last_id = event["id"]
            if event.get("type") == "gap" and self._raise_on_gap:
                raise EventGap(event)
            return event
        self._release()
        raise StopIteration

    @staticmethod
    def _decode(frame: Any) -> dict[str, Any]:
        try:
            event = json.loads(frame.data)
        except ValueError:
            raise ProtocolError(f"event frame is not JSON: {frame.data[:200]!r}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ProtocolError(f"event frame is not an event object: {frame.data[:200]!r}")
        return event

    def _open(self) -> None:
        while not self._closed.is_set():
            try:
                self._connect()
                return
            except self._transient as exc:
                if not (self._opened_once and self._reconnect):
                    raise
                failure: Exception = exc
            except Unauthenticated:
                # A rotated token, or a daemon restarted with a new one: read it again.
                if not (self._opened_once and self._reconnect and self._client.refresh_endpoint()):
                    raise
                continue
            except HttpStatusError as exc:  # 503: at its connection cap, try again later
                if not (self._opened_once and self._reconnect and exc.status == 503):
                    raise
                failure = exc
            self._pause(f"cannot reconnect ({reason_of(failure)})")
            self._client.refresh_endpoint()

    def _connect(self) -> None:
        client = self._client
        if self._opened_once:
            newest = client.last_event_id()
            if newest < self.last_id:
                raise EventLogReset(self.last_id, newest)
        import sseclient

        response = client._open_stream(self.last_id, self._query, self._read_timeout)
        # chunk_size=None: hand over each chunk as it arrives, never wait to fill a buffer.
        self._frames = sseclient.SSEClient(response.iter_content(chunk_size=None)).events()
        self._response = response
        self._delivered_since_connect = False
        if self._opened_once:
            self._on_reconnect(f"reconnected to {client.endpoint.address}, resuming after event {self.last_id}")
        self._opened_once = True

    def _drop(self, why: str, exc: BaseException | None = None) -> None:
        self._release()
        if self._closed.is_set():
            return
        if not self._reconnect:
            self._closed.set()
            if exc is not None:
                raise NotRunning(why) from None
            return
        if self._delivered_since_connect:
            self._on_reconnect(f"{why}; reconnecting")
        else:  # a connection that ends before delivering anything: do not spin on it
            self._pause(why)

    def _pause(self, why: str) -> None:
        delay = self._backoff * (0.5 + random.random())
        self._on_reconnect(f"{why}; retrying in {delay:.1f} s")
        self._closed.wait(delay)
        self._backoff = min(self._backoff * 2, self._max_backoff_s)

    def _release(self) -> None:
        response, self._response, self._frames = self._response, None, None
        if response is not None:
            response.close()

    def close(self) -> None:
        """Stop iterating and close the connection. From another thread than the reader,
        the reader stops at its next frame or heartbeat and closes the connection itself."""
        self._closed.set()
        if self._reader in (None, threading.get_ident()):
            self._release()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# -- typed helpers ----------------------------------------------------------------------
