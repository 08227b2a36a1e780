"""Usage per day: what runtimes reported, summed by UTC day, kept in ``daemon.db``.

Owns: adding a turn's reported usage (``turn_done.usage``: token counts and ``cost_usd``) to
the day it ended, and answering the reference's ``daily_tokens`` and ``daily_cost_usd`` for
today: ``None`` while no runtime has reported that figure today, never an invented zero.
Tokens are input + output + cache reads + cache writes, as the runtimes count them.

Must not: judge budgets (``session_budget`` does, per session) or know sessions.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .records import RecordsNotStored, RecordTable

log = logging.getLogger("cc_daemon.sessions")

TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
#: Days kept; older ones are dropped as new days come.
KEEP_DAYS = 90


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class DailyUsage:
    """Thread-safe; written once per turn that reported usage."""

    def __init__(self, table: RecordTable | None, clock: Callable[[], float] = time.time):
        self._table = table
        self._clock = clock
        self._lock = threading.Lock()
        self._days: dict[str, dict[str, Any]] = table.load() if table is not None else {}

    def add(self, usage: dict[str, Any]) -> None:
        tokens = [usage[name] for name in TOKEN_FIELDS if isinstance(usage.get(name), int)]
        cost = usage.get("cost_usd") if isinstance(usage.get("cost_usd"), (int, float)) else None
        if not tokens and cost is None:
            return
        day = utc_day(self._clock())
        with self._lock:
            totals = self._days.setdefault(day, {"tokens": None, "cost_usd": None})
            if tokens:
                totals["tokens"] = (totals["tokens"] or 0) + sum(tokens)
            if cost is not None:
                totals["cost_usd"] = round((totals["cost_usd"] or 0.0) + float(cost), 6)
            stale = sorted(self._days)[:-KEEP_DAYS]
            for old in stale:
                del self._days[old]
            record = dict(totals)
        if self._table is not None:
            try:
                self._table.write({day: record}, deletes=stale)
            except RecordsNotStored as exc:
                log.error("the usage of %s could not be stored: %s", day, exc)

    def today(self) -> tuple[int | None, float | None]:
        with self._lock:
            totals = self._days.get(utc_day(self._clock()), {})
        return totals.get("tokens"), totals.get("cost_usd")
