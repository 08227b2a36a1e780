"""The failure throttle: how many failed authentications a peer may make before it is locked out.

Owns: counting failures per peer key (a client IP on TCP, ``uid:N`` on a Unix socket; never
the ephemeral source port), the lockout and when it ends, and the bound on its memory (the
oldest peers are forgotten first; entries expire with their window or lockout).

Must not: decide what a failure is (``auth`` does), see a token, or know about HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

from .lru import remember


class Throttle:
    """Locks out a peer after repeated failures. Memory is bounded; old entries expire."""

    def __init__(self, max_failures: int = 3, window_s: float = 10.0, lockout_s: float = 60.0,
                 max_peers: int = 4096, clock=time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_peers = max_peers
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: OrderedDict[str, float] = OrderedDict()

    def retry_after(self, peer: str) -> float | None:
        """Seconds until ``peer`` may try again, or None when it is not locked out."""
        now = self._clock()
        with self._lock:
            until = self._locked_until.get(peer)
            if until is None:
                return None
            if until <= now:
                del self._locked_until[peer]
                return None
            return until - now

    def record_failure(self, peer: str) -> bool:
        """Count a failure; True when this one locks the peer out."""
        now = self._clock()
        with self._lock:
            recent = self._failures.pop(peer, None) or deque()
            recent.append(now)
            while recent and recent[0] <= now - self.window_s:
                recent.popleft()
            if len(recent) >= self.max_failures:
                remember(self._locked_until, peer, now + self.lockout_s, self.max_peers)
                return True
            remember(self._failures, peer, recent, self.max_peers)
            return False

    def size(self) -> int:
        with self._lock:
            return len(self._failures) + len(self._locked_until)
