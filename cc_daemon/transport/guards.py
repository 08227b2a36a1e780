"""Connection guards: deadlines, in-flight requests, and the answer to connections over the cap.

Owns: who holds a connection slot (``Gate``: proven connections keep theirs, strangers share
a pool, oldest evicted first), the whole-request deadline (``Reaper``), the count of requests being answered that a
graceful stop waits for (``InFlight``), and answering and closing connections over the
connection cap without a thread each (``Refuser``).

Must not: parse HTTP or know the daemon's services; it is handed sockets and handlers.
"""

from __future__ import annotations

import collections
import logging
import selectors
import socket
import threading
import time
from typing import Protocol

from .. import API_VERSION, API_VERSION_HEADER
from .kernel import leave_signals_to_the_main_thread

log = logging.getLogger("cc_daemon.transport")


class Deadlined(Protocol):
    """A request handler as the reaper sees it."""

    request: socket.socket

    def address_string(self) -> str: ...


class Reaper:
    """Cuts off connections whose current request outlived its deadline.

    Socket timeouts apply per ``recv``; a client trickling one byte at a time would never
    trip them. A scan once a second over the open connections (at most the connection
    cap) costs nothing per request, unlike a timer per request.
    """

    SCAN_INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[Deadlined, float] = {}
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="ccd-reaper", daemon=True).start()

    def arm(self, handler: Deadlined, seconds: float) -> None:
        with self._lock:
            self._deadlines[handler] = time.monotonic() + seconds

    def disarm(self, handler: Deadlined) -> None:
        with self._lock:
            self._deadlines.pop(handler, None)

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        while not self._stopped.wait(self.SCAN_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                expired = [h for h, deadline in self._deadlines.items() if deadline <= now]
                for handler in expired:
                    del self._deadlines[handler]
            for handler in expired:
                log.info("request from %s exceeded its deadline; closing", handler.address_string())
                shut_down(handler.request)


class Gate:
    """Who holds a connection slot: proven connections keep theirs, strangers share a pool.

    A connection is proven once one of its requests passed authentication (the right token,
    or the owner's uid on the Unix socket). Until then it could be anyone's: every local user
    and every web page the owner visits can open TCP connections to loopback, thousands of
    them, idle or trickling. Strangers share ``unproven_slots``; a new connection past that
    evicts the oldest stranger (its socket is shut down, so its thread sees the end and
    leaves). A flood thus churns only its own connections, and a newcomer, the owner's
    included, always gets a slot for as long as it takes to present its credentials, which
    is microseconds, not the seconds a flood needs to cycle through the pool. The cap on all
    connections (one thread each) holds: past it, with no stranger to evict, the answer is 503.
    Counting by peer address would not help here: every local user is 127.0.0.1.
    """

    def __init__(self, max_connections: int, unproven_slots: int):
        self._max = max_connections
        self._unproven_slots = max(1, min(unproven_slots, max_connections))
        self._lock = threading.Lock()
        self._unproven: collections.OrderedDict[socket.socket, None] = collections.OrderedDict()  # oldest first
        self.active = 0

    def admit(self, sock: socket.socket) -> tuple[bool, socket.socket | None]:
        """(whether ``sock`` gets a slot, a stranger's socket the caller must shut down)."""
        with self._lock:
            victim = None
            if len(self._unproven) >= self._unproven_slots:
                victim, _ = self._unproven.popitem(last=False)
            elif self.active >= self._max:
                return False, None
            self._unproven[sock] = None
            self.active += 1
            return True, victim

    def prove(self, sock: socket.socket) -> None:
        """One of ``sock``'s requests authenticated: it is no stranger's, and is never evicted."""
        if sock in self._unproven:  # unlocked peek: true for the first request only
            with self._lock:
                self._unproven.pop(sock, None)

    def leave(self, sock: socket.socket) -> None:
        with self._lock:
            self._unproven.pop(sock, None)
            self.active -= 1


def shut_down(sock: socket.socket) -> None:
    """End a connection another thread serves: its blocked read returns, and it cleans up."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class InFlight:
    """Counts requests being answered, so a graceful stop can let them finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def enter(self) -> None:
        with self._cond:
            self._count += 1

    def leave(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count <= 0, timeout)


class Refuser:
    """Answers connections over the cap with 503 at once, and closes them without a thread each.

    The answer is sent on the accept thread without waiting: it fits the empty send buffer of
    a new connection (what does not is sent as soon as the socket takes it). The write side
    is then shut and the connection lingers, read and discarded, until its peer closes or
    ``LINGER_S`` passed: closing with unread input makes the peer see a reset instead of our
    answer. One thread watches every lingering connection with a selector, so no refusal
    waits behind another's linger; beyond ``MAX_LINGERING`` connections the oldest is closed
    early (it has had its answer longest), as is the oldest of more than ``MAX_LINGERING``
    waiting for the thread to watch them: a flood costs a bounded number of descriptors.
    """

    BODY = b'{"error":"too many connections"}'
    RESPONSE = (f"HTTP/1.1 503 Service Unavailable\r\n{API_VERSION_HEADER}: {API_VERSION}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\nRetry-After: 1\r\n"
                "Connection: close\r\n\r\n").encode() + BODY
    LINGER_S = 0.5
    MAX_LINGERING = 256
    #: Read per readiness of one connection, so that a peer that keeps sending cannot keep
    #: the thread from the others.
    READ_BYTES = 65536

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._incoming: collections.deque[tuple[socket.socket, Lingering]] = collections.deque()  # not yet watched
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="ccd-refuser", daemon=True)
        self._thread.start()

    def refuse(self, sock: socket.socket) -> None:
        unsent = start_answer(sock, self.RESPONSE)
        with self._lock:
            if unsent is None or self._stopped:
                dropped: socket.socket | None = sock
            else:
                if not self._incoming:  # otherwise a wake-up is already on its way
                    self._wake()
                self._incoming.append((sock, Lingering(unsent, time.monotonic() + self.LINGER_S)))
                # The thread is behind (a flood, or no GIL for it): the oldest waiting goes now.
                dropped = self._incoming.popleft()[0] if len(self._incoming) > self.MAX_LINGERING else None
        if dropped is not None:
            dropped.close()

    def stop(self) -> None:
        """Close every lingering connection and the thread's own descriptors."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._wake()
        self._thread.join(2.0)

    def _wake(self) -> None:
        """Interrupt the thread's wait; the lock is held, so the wake-up socket is still open."""
        try:
            self._wake_write.send(b"\0")
        except BlockingIOError:
            pass  # full of wake-ups the thread has yet to read

    # -- the refuser's thread ---------------------------------------------------------------
    def _clear_wake(self) -> None:
        try:
            self._wake_read.recv(4096)
        except BlockingIOError:
            pass

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        lingering: dict[socket.socket, Lingering] = {}  # in order of refusal: oldest first
        try:
            while self._take_incoming(lingering):
                self._close_expired(lingering)
                for key, events in self._selector.select(self._timeout(lingering)):
                    if key.fileobj is self._wake_read:
                        self._clear_wake()
                    else:
                        self._serve(key.fileobj, events, lingering)  # type: ignore[arg-type]
        except Exception:
            log.exception("the refuser stopped: connections over the cap are answered and closed at once")
        finally:
            self._close_all(lingering)

    def _take_incoming(self, lingering: dict[socket.socket, Lingering]) -> bool:
        """Watch the connections answered since the last look; False once stopped."""
        with self._lock:
            if self._stopped:
                return False
            incoming, self._incoming = self._incoming, collections.deque()
        for sock, state in incoming:
            lingering[sock] = state
            try:
                self._selector.register(sock, state.wanted())
            except OSError:  # the kernel's limit of watched descriptors: no linger for this one
                self._forget(sock, lingering)
        return True

    def _close_expired(self, lingering: dict[socket.socket, Lingering]) -> None:
        now = time.monotonic()
        while lingering:
            sock, state = next(iter(lingering.items()))
            if state.deadline > now and len(lingering) <= self.MAX_LINGERING:
                return
            self._forget(sock, lingering)

    @staticmethod
    def _timeout(lingering: dict[socket.socket, Lingering]) -> float | None:
        if not lingering:
            return None
        return max(0.0, next(iter(lingering.values())).deadline - time.monotonic())

    def _serve(self, sock: socket.socket, events: int, lingering: dict[socket.socket, Lingering]) -> None:
        state = lingering[sock]
        try:
            if events & selectors.EVENT_READ and not sock.recv(self.READ_BYTES):
                state.peer_done = True
            if events & selectors.EVENT_WRITE:
                state.unsent = state.unsent[sock.send(state.unsent):]
                if not state.unsent:
                    sock.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            return
        except OSError:
            self._forget(sock, lingering)
            return
        if state.peer_done and not state.unsent:
            self._forget(sock, lingering)
        elif self._selector.get_key(sock).events != state.wanted():
            self._selector.modify(sock, state.wanted())

    def _forget(self, sock: socket.socket, lingering: dict[socket.socket, Lingering]) -> None:
        del lingering[sock]
        try:
            self._selector.unregister(sock)
        except KeyError:
            pass  # never registered: its registration failed
        sock.close()

    def _close_all(self, lingering: dict[socket.socket, Lingering]) -> None:
        with self._lock:
            self._stopped = True  # from here on, refuse() closes at once (after the answer)
            incoming, self._incoming = self._incoming, collections.deque()
            self._wake_read.close()
            self._wake_write.close()
        for sock, _ in incoming:
            sock.close()
        for sock in list(lingering):
            self._forget(sock, lingering)
        self._selector.close()


class Lingering:
    """A refused connection after its answer started: the bytes of it still to send, when it
    is closed whatever its peer does, and whether its peer has closed its side."""

    __slots__ = ("unsent", "deadline", "peer_done")

    def __init__(self, unsent: bytes, deadline: float):
        self.unsent = unsent
        self.deadline = deadline
        self.peer_done = False

    def wanted(self) -> int:
        """The selector events to watch: the peer's input until it ends, writability while
        some of the answer is unsent."""
        return (0 if self.peer_done else selectors.EVENT_READ) | (selectors.EVENT_WRITE if self.unsent else 0)


def start_answer(sock: socket.socket, data: bytes) -> bytes | None:
    """Send what a new connection takes of ``data`` now and shut its write side once all of it
    went; returns what is left to send, or None when the connection already failed."""
    try:
        sock.setblocking(False)
        sent = sock.send(data)
        if sent == len(data):
            sock.shutdown(socket.SHUT_WR)
    except BlockingIOError:
        sent = 0
    except OSError:
        return None
    return data[sent:]
