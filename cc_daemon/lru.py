"""Bounded tables that forget their least recently used entries.

Owns: the one way the daemon keeps a per-key table from growing without bound (message
ids of a session, ended sessions, client records, peers that failed to authenticate): an
insertion-ordered ``OrderedDict`` whose newest entry is last, trimmed from the front.

Must not: lock. Each caller already holds the lock of the table it owns.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def remember(table: OrderedDict[K, V], key: K, value: V, limit: int) -> list[K]:
    """Store ``key`` as the most recently used entry, then trim to ``limit``; returns the
    keys that were dropped, oldest first."""
    table[key] = value
    table.move_to_end(key)
    return trim(table, limit)


def trim(table: OrderedDict[K, V], limit: int) -> list[K]:
    """Drop the oldest entries beyond ``limit``; returns their keys, oldest first."""
    dropped = []
    while len(table) > limit:
        dropped.append(table.popitem(last=False)[0])
    return dropped
