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
from bisect import bisect_left
from typing import Any, Callable

LabelKey = tuple[tuple[str, str], ...]
#: A series read when ``/metrics`` is scraped: one number, or one per value of its label.
Reader = Callable[[], "float | dict[str, float]"]
#: Upper bounds (seconds) of the RPC latency buckets: a ping takes ~0.1 ms, a session.create
#: that starts a runtime tens of milliseconds, anything near a second is worth seeing.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, uptime_s: Callable[[], float], active_sessions: Callable[[], int],
                 daily_usage: Callable[[], tuple[int | None, float | None]] = lambda: (None, None)) -> None:
        """``active_sessions``: sessions whose runtime runs or will restart (the reference counts
        its registered runtimes under the same name)."""
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._gauges: dict[str, tuple[Reader, str | None]] = {}
        #: name -> (bucket bounds, label key -> [count per bucket..., sum, count])
        self._histograms: dict[str, tuple[tuple[float, ...], dict[LabelKey, list[float]]]] = {}
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

    def gauge(self, name: str, help_text: str, read: Reader, *, label: str | None = None,
              kind: str = "gauge") -> None:
        """A series whose value is read when ``/metrics`` is scraped: one number, or with
        ``label`` a mapping from that label's values (a bounded set the daemon chooses) to
        numbers. ``kind="counter"`` for a total a service keeps itself."""
        self._help[name] = (kind, help_text)
        self._gauges[name] = (read, label)

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._help[name] = ("histogram", help_text)
        self._histograms[name] = (tuple(sorted(buckets)), {})

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Count ``value`` in the histogram ``name`` (declared with ``histogram``)."""
        bounds, series = self._histograms[name]
        key = label_key(labels)
        with self._lock:
            cells = series.get(key)
            if cells is None:
                cells = series[key] = [0.0] * (len(bounds) + 3)  # buckets, +Inf, sum, count
            cells[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value
            cells[-2] += value
            cells[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        key = label_key(labels)
        with self._lock:
            return self._counters.get(name, {}).get(key, 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = {name: dict(series) for name, series in self._counters.items()}
            histograms = {name: (bounds, {key: list(cells) for key, cells in series.items()})
                          for name, (bounds, series) in self._histograms.items()}
        for name in sorted(counters):
            self._header(lines, name)
            for key, amount in sorted(counters[name].items()):
                lines.append(f"{name}{format_labels(key)} {format_number(amount)}")
        for name in sorted(histograms):
            self._header(lines, name)
            bounds, series = histograms[name]
            for key, cells in sorted(series.items()):
                cumulative = 0.0
                for bound, count in zip((*bounds, float("inf")), cells):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f"{name}_bucket{format_labels((*key, ('le', le)))} {format_number(cumulative)}")
                lines.append(f"{name}_sum{format_labels(key)} {format_number(cells[-2])}")
                lines.append(f"{name}_count{format_labels(key)} {format_number(cells[-1])}")
        for name in sorted(self._gauges):
            read, label = self._gauges[name]
            value = read()
            if value is None:
                continue  # not known: no series rather than an invented zero
            self._header(lines, name)
            if label is None:
                lines.append(f"{name} {format_number(float(value))}")
            else:
                for label_value, amount in sorted(value.items()):
                    lines.append(f"{name}{format_labels(((label, label_value),))} {format_number(float(amount))}")
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
