"""The failure throttle: how many guesses a peer may make before its next ones are refused.

Owns: who counts as one peer (``peer_key``: every loopback address is one, any other client
IP is itself, never with the ephemeral source port; a Unix-socket peer is its uid), counting
failures per peer, the lockout and when it ends, and the bound on its memory (the oldest
peers are forgotten first; entries expire with their window or lockout).

Must not: decide what a failure is, or refuse anyone by itself (``auth`` asks it about
guesses only, after the credentials were checked); see a token; know about HTTP.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict, deque

from .lru import remember

#: The one key of every loopback address.
LOOPBACK = "loopback"


def peer_key(address: str) -> str:
    """Whose failures count together, for a TCP client's address.

    All of 127.0.0.0/8 and ::1 (also as ::ffff:127.x.y.z) is one peer: any local process
    may connect from any of those addresses, so a key per address would give a guesser 2^24
    fresh counts. The owner is on loopback too, and its token is never refused for this
    key's failures (``auth``), so sharing the key costs it nothing.
    """
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 zone (fe80::1%eth0) is no part of it
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return LOOPBACK if ip.is_loopback else str(ip)


class Throttle:
    """Locks out a peer after ``max_failures`` failures within ``window_s``, for ``lockout_s``.
    Memory is bounded; old entries expire."""

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
