"""The audit log: every authentication decision, in ``logs/auth.jsonl`` (RFC 0002 §6).

Owns: the line's fields; writing each decision as one whole line, or, past
``LINES_PER_SECOND`` refusals of one peer in a second, as an exact count in an aggregate
line; the one writer (a lock around counting, writing and rotating, so a line is never torn
and a rotation happens once); the bound on disk (``MAX_BYTES`` per file, ``BACKUPS`` old
files) and on memory (``MAX_PEERS`` peers counted at once).

Must not: decide anything (``auth`` does), or write a token, a client id or a request body:
every field it is given is a fixed text, an address, a uid or a validated client kind.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from .safe_paths import make_private_dir
from .storage import PrivateRotatingFileHandler

#: Refusals of one peer written as lines of their own per second; the rest of that second's
#: are counted. A flood then costs a few lines a second instead of one per request, so it
#: can neither push the history out of the kept files in minutes nor slow every request
#: down to the disk's pace.
LINES_PER_SECOND = 10
WINDOW_S = 1.0


class Window:
    """One peer's refusals within a second: how many got lines, and the count of the others
    by kind (``transport, outcome, reason, uid``) with the first and last time of each."""

    __slots__ = ("started", "written", "counted")

    def __init__(self, started: float):
        self.started = started
        self.written = 0
        self.counted: dict[tuple[str, str, str, int | None], list[Any]] = {}

    def admits(self, kind: tuple[str, str, str, int | None], now: float) -> bool:
        """Whether a refusal gets a line of its own; if not, it is counted here (at ``now``)."""
        if self.written < LINES_PER_SECOND:
            self.written += 1
            return True
        counted = self.counted.get(kind)
        if counted is None:
            self.counted[kind] = [1, now, now]
        else:
            counted[0] += 1
            counted[2] = now
        return False


class AuditLog:
    """One compact JSON line per authentication decision, and the counts of flooded ones."""

    #: The bound on disk: a file is rotated before it would reach MAX_BYTES and BACKUPS old
    #: ones are kept, so the log never takes more than MAX_BYTES * (BACKUPS + 1) = 60 MiB.
    MAX_BYTES = 10 * 1024 * 1024
    BACKUPS = 5
    #: Peers whose counts are held at once; past it the oldest window is written out early.
    MAX_PEERS = 4096

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, Window] = OrderedDict()  # oldest window first
        #: Decisions since start by outcome (for /metrics), whether or not a line is written.
        self._decisions: dict[str, int] = {}
        self._handler: logging.Handler | None = None
        if path is not None:
            make_private_dir(path.parent)
            self._handler = PrivateRotatingFileHandler(path, maxBytes=self.MAX_BYTES, backupCount=self.BACKUPS,
                                                       encoding="utf-8")

    def record(self, *, transport: str, outcome: str, peer: str, key: str, reason: str,
               uid: int | None = None, client_kind: str | None = None) -> None:
        """One decision: ``peer`` is what the line names, ``key`` whose refusals are counted
        together (``throttle.peer_key``). Successes always get their line: only the owner
        can cause them, once per connection."""
        with self._lock:
            self._decisions[outcome] = self._decisions.get(outcome, 0) + 1
        if self._handler is None:
            return
        now = time.time()
        entry = {"ts": now, "transport": transport, "outcome": outcome, "peer": peer, "reason": reason, "uid": uid}
        if client_kind is not None:
            entry["client_kind"] = client_kind
        with self._lock:
            if outcome == "ok" or self._window_of(key).admits((transport, outcome, reason, uid), now):
                self._write(entry)

    def decision_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._decisions)

    def flush(self) -> None:
        """Write the counts of every window that has ended (the daemon calls this each second)."""
        with self._lock:
            now = self._clock()
            while self._windows:
                key, window = next(iter(self._windows.items()))
                if now - window.started < WINDOW_S:
                    return  # the later ones started later still
                del self._windows[key]
                self._write_counts(key, window)

    def close(self) -> None:
        if self._handler is None:
            return
        with self._lock:
            while self._windows:
                self._write_counts(*self._windows.popitem(last=False))
            self._handler.close()

    # -- under the lock -----------------------------------------------------------------------
    def _window_of(self, key: str) -> Window:
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.started < WINDOW_S:
            return window
        if window is not None:
            del self._windows[key]
            self._write_counts(key, window)
        elif len(self._windows) >= self.MAX_PEERS:
            self._write_counts(*self._windows.popitem(last=False))
        window = self._windows[key] = Window(now)
        return window

    def _write_counts(self, key: str, window: Window) -> None:
        for (transport, outcome, reason, uid), (count, since, last) in window.counted.items():
            self._write({"ts": last, "transport": transport, "outcome": outcome, "peer": key, "reason": reason,
                         "uid": uid, "count": count, "since": since})

    def _write(self, entry: dict[str, Any]) -> None:
        # emit, not handle: the handler's own lock would be a second one around the same write.
        line = json.dumps(entry, separators=(",", ":"))
        self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

