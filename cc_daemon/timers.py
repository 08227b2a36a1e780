"""One thread that runs callbacks at deadlines (permission expiry, restart backoff).

Owns: a heap of deadlines on the monotonic clock, woken by a condition variable, so a
deadline fires within milliseconds instead of on the next polling tick, with one thread
for any number of timers.

Must not: run long work on its thread; callbacks are expected to be quick (publish an
event, flip a state) and exceptions they raise are logged and swallowed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("cc_daemon.timers")


class TimerHandle:
    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback: Callable[[], None]):
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, clock=time.monotonic, name: str = "ccd-timers"):
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(deadline, callback)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._counter), handle))
            self._cond.notify()
        return handle

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self._clock() + delay_s, callback)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                handle = self._next_due()
                if handle is None:
                    return
            try:
                handle.callback()
            except Exception:
                log.exception("timer callback failed")

    def _next_due(self) -> TimerHandle | None:
        """Wait (lock held) for the next live handle that is due; None once stopped."""
        while not self._stopped:
            if not self._heap:
                self._cond.wait()
                continue
            deadline, _, handle = self._heap[0]
            if handle.cancelled:
                heapq.heappop(self._heap)
                continue
            delay = deadline - self._clock()
            if delay > 0:
                self._cond.wait(delay)
                continue
            heapq.heappop(self._heap)
            return handle
        return None
