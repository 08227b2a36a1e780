"""Counters and gauges for ``/metrics``, and the daemon's vitals for ``/healthz``.

Owns: a small, thread-safe registry of named series, rendered in the Prometheus text
exposition format; and the reference daemon's JSON bodies (``health()`` for ``/healthz``,
``summary()`` for a ``/metrics`` that is not asked for text), built from the same readers
as the gauges so that the two views never disagree. Label values are bounded sets chosen
by the daemon (method names, outcomes, error codes): never ids, tokens or client input,
so the number of series cannot be grown by a caller. What the daemon does not know is
``null`` in the JSON (and no series in the text), never an invented zero.

Must not: import HTTP code or services; services report into it through plain calls, and
the daemon hands it the readers of its vitals.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

LabelKey = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self, uptime_s: Callable[[], float], active_sessions: Callable[[], int],
                 daily_usage: Callable[[], tuple[int | None, float | None]] = lambda: (None, None)) -> None:
        """``active_sessions``: sessions whose runtime runs or will restart (the reference counts
        its registered runtimes under the same name)."""
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._uptime_s = uptime_s
        self._active_sessions = active_sessions
        self._daily_usage = daily_usage
        self.gauge("ccd_uptime_seconds", "Seconds since the daemon started", uptime_s)
        self.gauge("ccd_sessions_active", "Sessions whose runtime runs or will restart", active_sessions)

    def health(self) -> dict[str, Any]:
        """The reference's ``/healthz`` fields. ``model`` is null: the daemon has no model of its
        own, each session's runtime chooses one."""
        return {"uptime_s": round(self._uptime_s(), 3), "model": None, "active_sessions": self._active_sessions()}

    def summary(self) -> dict[str, Any]:
        """The reference's JSON ``/metrics``. ``circuits`` is empty because the daemon has no
        circuit breakers; ``daily_tokens`` and ``daily_cost_usd`` are today's (UTC) sums of what
        runtimes reported (``usage_ledger``), null while none reported that figure today."""
        tokens, cost = self._daily_usage()
        return {**self.health(), "circuits": {}, "daily_tokens": tokens, "daily_cost_usd": cost}

    def describe_counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)
        self._counters.setdefault(name, {})

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = label_key(labels)
        with self._lock:
            series = self._counters.get(name)
            if series is None:
                series = self._counters[name] = {}
            series[key] = series.get(key, 0.0) + amount

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read when ``/metrics`` is scraped."""
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        key = label_key(labels)
        with self._lock:
            return self._counters.get(name, {}).get(key, 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = {name: dict(series) for name, series in self._counters.items()}
        for name in sorted(counters):
            self._header(lines, name)
            for key, amount in sorted(counters[name].items()):
                lines.append(f"{name}{format_labels(key)} {format_number(amount)}")
        for name in sorted(self._gauges):
            self._header(lines, name)
            lines.append(f"{name} {format_number(float(self._gauges[name]()))}")
        return "\n".join(lines) + "\n"

    def _header(self, lines: list[str], name: str) -> None:
        kind, help_text = self._help.get(name, ("untyped", name))
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")


def label_key(labels: dict[str, str]) -> LabelKey:
    # Counting happens several times per request: no sort for the usual zero or one label.
    return tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items())


def format_labels(key: LabelKey) -> str:
    if not key:
        return ""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in key)
    return "{" + inner + "}"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
