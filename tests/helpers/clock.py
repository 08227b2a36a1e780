"""A clock the test moves by hand, for anything the daemon times (windows, lockouts, retention).

Owns: ``FakeClock``, a callable returning ``now``; pass it where the code takes ``clock=``.
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
