"""Turning benchmark records into tables and target verdicts.

Owns: the record format shared by the runner (one flat dict per measurement, printed as
a JSON line), the markdown tables, and the issue-7 targets with their PASS / FAIL / N/A
verdicts, each computed from numbers measured in the same run.

Must not: measure anything or start servers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

Record = dict[str, Any]

CCD, REFERENCE, CEILING = "cc_daemon", "reference", "ceiling"


def find(records: Iterable[Record], **match: Any) -> Record | None:
    """The last record whose fields equal ``match`` (later measurements win)."""
    found = None
    for record in records:
        if all(record.get(key) == value for key, value in match.items()):
            found = record
    return found


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(not measured in this run)"
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- tables -------------------------------------------------------------------------------
def rpc_table(records: list[Record]) -> str:
    rows = []
    configs = sorted({(r["transport"], r["keepalive"], r["clients"]) for r in records if r["bench"] == "rpc"},
                     key=lambda c: (c[0] != "tcp", not c[1], c[2]))
    for transport, keepalive, clients in configs:
        key = dict(bench="rpc", transport=transport, keepalive=keepalive, clients=clients)
        ours, ref, ceil = (find(records, server=name, **key) for name in (CCD, REFERENCE, CEILING))
        rate = lambda r: r["calls_per_s"] if r else None  # noqa: E731
        rows.append([transport, "on" if keepalive else "off", str(clients), fmt(rate(ours), 0),
                     "/".join(fmt(ours.get(p), 2) for p in ("p50_ms", "p90_ms", "p99_ms")) if ours else "-",
                     fmt(rate(ref), 0), fmt(ref["p99_ms"], 2) if ref else "-", fmt(rate(ceil), 0),
                     fmt_ratio(ratio(rate(ours), rate(ref))), fmt_ratio(ratio(rate(ours), rate(ceil))),
                     fmt(ours.get("server_cpu_us_per_call"), 0) if ours else "-",
                     fmt(ours.get("client_cpu_us_per_call"), 0) if ours else "-"])
    return table(["transport", "keep-alive", "clients", "cc_daemon calls/s", "p50/p90/p99 ms",
                  "reference calls/s", "ref p99 ms", "ceiling calls/s", "x ref", "x ceiling",
                  "server CPU us/call", "client CPU us/call"], rows)


def sse_table(records: list[Record]) -> str:
    rows = []
    for record in (r for r in records if r["bench"] in ("sse", "sse_paused")):
        what = (f"{record['subscribers']} subscribers" if record["bench"] == "sse"
                else f"paused reader ({record['variant']})")
        rows.append([record["server"], what, fmt(record["published"]), fmt(record["published_per_s"], 0),
                     fmt(record["delivered_per_s"], 0), fmt(record.get("p50_ms"), 2), fmt(record.get("p99_ms"), 2),
                     fmt(record["lost"]), fmt(record["gap_reported"]), fmt(record["duplicated"]),
                     fmt(record["reordered"])])
    return table(["server", "scenario", "published", "published/s", "delivered/s", "p50 ms", "p99 ms",
                  "lost silently", "in a gap", "duplicated", "out of order"], rows)


def memory_table(records: list[Record]) -> str:
    def streams_cell(record: Record, count: int) -> str:
        if f"rss_kb_{count}" not in record:
            return record.get(f"error_{count}", "-")
        return (f"{record[f'rss_kb_{count}'] / 1024:.1f} MB, {record[f'threads_{count}']} threads, "
                f"{record[f'kb_per_subscriber_{count}']:.1f} KB/sub")

    memory = [r for r in records if r["bench"] == "memory"]
    counts = memory[0]["subscriber_counts"] if memory else []
    rows = [[r["server"], fmt(r["idle_rss_kb"] / 1024, 1), fmt(r["idle_threads"]),
             *(streams_cell(r, n) for n in counts), fmt(r.get("threads_per_subscriber"), 2)] for r in memory]
    return table(["server", "idle RSS MB", "idle threads", *(f"{n} idle streams" for n in counts),
                  "threads / subscriber"], rows)


def eventlog_table(records: list[Record]) -> str:
    rows = []
    for r in (r for r in records if r["bench"] == "eventlog"):
        kind = r.get("eventlog_bench")
        if kind == "eventlog_publish":
            rows.append([f"publish: {r['mode']}", fmt(r["subscribers"]), r["synchronous"], fmt(r["events_per_s"]),
                         fmt(r["us_per_event"]), fmt(r["cpu_us_per_event"]), fmt(r["events_per_commit"])])
        elif kind == "eventlog_store_burst":
            rows.append([f"store alone: bursts of {r['burst']} appends", "0", "normal", fmt(r["events_per_s"]),
                         fmt(r["us_per_event"]), fmt(r["cpu_us_per_event"]), fmt(r["events_per_commit"])])
        elif kind == "eventlog_replay":
            growth = r.get("rss_growth_kb", r.get("server_rss_growth_kb"))
            rows.append([f"replay since=0, {fmt(r['events'])} events: {r['path']}", "1", "-", fmt(r["events_per_s"]),
                         "-", "-", f"peak RSS +{growth / 1024:.1f} MB" if growth is not None else "-"])
    return table(["scenario", "subscribers", "sync", "events/s", "us/event (wall)", "CPU us/event",
                  "events/commit (replay: memory)"], rows)


def cold_table(records: list[Record]) -> str:
    rows = [[r["server"], fmt(r["median_ms"], 0), fmt(r["min_ms"], 0), fmt(r["max_ms"], 0), fmt(r["runs"])]
            for r in records if r["bench"] == "cold_start"]
    return table(["server", "median ms", "min ms", "max ms", "runs"], rows)


def cli_table(records: list[Record]) -> str:
    found = find(records, bench="cli_latency")
    if found is None:
        return "(not measured in this run)"
    bare = found["bare_python_ms"]
    rows = [[name, fmt(found[f"{name}_ms"]), fmt_ratio(ratio(found[f"{name}_ms"], bare))]
            for name in ("bare_python", "cli_rpc_ping", "curl") if f"{name}_ms" in found]
    return table(["command", "median ms", "x bare interpreter"], rows)


# -- targets ------------------------------------------------------------------------------
@dataclass
class Verdict:
    target: str
    outcome: str  # PASS, FAIL or N/A
    detail: str


def _check(target: str, ok: bool | None, detail: str) -> Verdict:
    return Verdict(target, "N/A" if ok is None else ("PASS" if ok else "FAIL"), detail)


def verdicts(records: list[Record]) -> list[Verdict]:
    return [_rpc_target(records), _sse_target(records), _paused_target(records), _durable_target(records),
            _rss_target(records), _per_subscriber_target(records), _cold_target(records), _cli_target(records)]


def _rpc_target(records: list[Record]) -> Verdict:
    key = dict(bench="rpc", transport="tcp", keepalive=True, clients=16)
    ours, ref, ceil = (find(records, server=name, **key) for name in (CCD, REFERENCE, CEILING))
    name = "RPC calls/s at 16 clients >= 3x reference and >= 0.7x ceiling (TCP, keep-alive)"
    if not ours or not ceil:
        return _check(name, None, "not measured")
    x_ref = ratio(ours["calls_per_s"], ref["calls_per_s"]) if ref else None
    x_ceil = ratio(ours["calls_per_s"], ceil["calls_per_s"])
    ok = (x_ceil >= 0.7) and (x_ref is None or x_ref >= 3)
    detail = (f"{ours['calls_per_s']:,.0f}/s = {fmt_ratio(x_ref)} reference, {fmt_ratio(x_ceil)} ceiling"
              + ("" if ref else " (reference not measured)"))
    return _check(name, ok, detail)


def _sse_target(records: list[Record]) -> Verdict:
    ours, ref = (find(records, bench="sse", server=name, subscribers=64) for name in (CCD, REFERENCE))
    name = "SSE 64 subscribers: >= 4x reference published/s, 0 lost/dup/reordered, p99 < 20 ms"
    if not ours:
        return _check(name, None, "not measured")
    x_ref = ratio(ours["published_per_s"], ref["published_per_s"]) if ref else None
    clean = ours["lost"] == ours["duplicated"] == ours["reordered"] == 0
    p99 = ours.get("p99_ms")
    ok = clean and p99 is not None and p99 < 20 and (x_ref is None or x_ref >= 4)
    detail = (f"{ours['published_per_s']:,.0f}/s = {fmt_ratio(x_ref)} reference; lost/dup/reordered "
              f"{ours['lost']}/{ours['duplicated']}/{ours['reordered']}; p99 {fmt(p99, 2)} ms")
    return _check(name, ok, detail)


def _paused_target(records: list[Record]) -> Verdict:
    runs = [r for r in records if r["bench"] == "sse_paused" and r["server"] == CCD]
    name = "A paused subscriber loses nothing silently (catches up, or an exact gap)"
    if not runs:
        return _check(name, None, "not measured")
    ok = all(r["lost"] == 0 and r["duplicated"] == 0 and r["reordered"] == 0 for r in runs)
    detail = "; ".join(f"{r['variant']}: {r['lost']} lost silently, {r['gap_reported']} reported in a gap"
                       for r in runs)
    ref = find(records, bench="sse_paused", server=REFERENCE)
    if ref:
        detail += f" (reference: {ref['lost']} of {ref['published']} lost silently)"
    return _check(name, ok, detail)


def durable_rates(records: list[Record]) -> tuple[Record | None, Record | None]:
    """The fastest durable publish bench_eventlog measured without subscribers, and the
    fastest unbatched one (a call per event).

    bench_eventlog owns its own format; a record counts when it mentions "publish" and
    carries a numeric ``events_per_s``.
    """
    publishes = [r for r in records if r["bench"] == "eventlog" and "publish" in compact(r).lower()
                 and isinstance(r.get("events_per_s"), (int, float)) and not isinstance(r["events_per_s"], bool)
                 and r.get("subscribers", 0) == 0 and r.get("synchronous", "normal") == "normal"]
    fastest = lambda rs: max(rs, key=lambda r: r["events_per_s"], default=None)  # noqa: E731
    return fastest(publishes), fastest([r for r in publishes if r.get("batch") == 1])


def _durable_target(records: list[Record]) -> Verdict:
    name = "Durable publish >= 100,000 events/s with group commit, < 10 us/event (bench/bench_eventlog.py)"
    skipped = find(records, bench="eventlog_skipped")
    if skipped:
        return _check(name, None, skipped["reason"])
    best, unbatched = durable_rates(records)
    if best is None:
        return _check(name, None, "bench_eventlog printed no publish events/s figure")
    described = lambda r: r.get("mode") or compact({k: v for k, v in r.items() if isinstance(v, str)})  # noqa: E731
    detail = f"{best['events_per_s']:,.0f} events/s, {best.get('us_per_event', '-')} us/event ({described(best)})"
    if unbatched is not None and unbatched is not best:
        detail += f"; unbatched, a call per event: {unbatched['events_per_s']:,.0f} events/s ({described(unbatched)})"
    fast_enough = best["events_per_s"] >= 100_000 and best.get("us_per_event", 0) < 10
    return _check(name, fast_enough, detail)


def _at_most_a_share_of_the_reference(records: list[Record], name: str, bench: str, field: str,
                                      show: Callable[[float], str], share: float = 0.6) -> Verdict:
    """Our ``field`` of ``bench`` must be at most ``share`` of the reference's (lower is better)."""
    ours, ref = (find(records, bench=bench, server=server) for server in (CCD, REFERENCE))
    if not ours or not ref:
        return _check(name, None, "not measured" if not ours else "reference not measured")
    x_ref = ratio(ours[field], ref[field])
    return _check(name, x_ref <= share, f"{show(ours[field])} = {fmt_ratio(x_ref)} reference ({show(ref[field])})")


def _rss_target(records: list[Record]) -> Verdict:
    return _at_most_a_share_of_the_reference(records, "Idle RSS <= 0.6x reference", "memory", "idle_rss_kb",
                                             lambda kb: f"{kb / 1024:.1f} MB")


def _per_subscriber_target(records: list[Record]) -> Verdict:
    ours = find(records, bench="memory", server=CCD)
    name = "<= 100 KB RSS per idle SSE subscriber"
    if not ours or ours.get("kb_per_subscriber") is None:
        return _check(name, None, "not measured")
    ref = find(records, bench="memory", server=REFERENCE)
    detail = f"{ours['kb_per_subscriber']:.1f} KB, {ours['threads_per_subscriber']:.2f} threads per subscriber"
    if ref and ref.get("kb_per_subscriber") is not None:
        detail += f" (reference {ref['kb_per_subscriber']:.1f} KB)"
    return _check(name, ours["kb_per_subscriber"] <= 100, detail)


def _cold_target(records: list[Record]) -> Verdict:
    return _at_most_a_share_of_the_reference(records, "Cold start (spawn to first system.ping) <= 0.6x reference",
                                             "cold_start", "median_ms", lambda ms: f"{ms:.0f} ms")


def _cli_target(records: list[Record]) -> Verdict:
    name = "One-shot `cheetahclaws rpc system.ping` <= 4x a bare interpreter start"
    found = find(records, bench="cli_latency")
    if found is None:
        return _check(name, None, "not measured")
    x_bare = ratio(found["cli_rpc_ping_ms"], found["bare_python_ms"])
    return _check(name, x_bare <= 4, f"{found['cli_rpc_ping_ms']:.0f} ms = {fmt_ratio(x_bare)} "
                                     f"{found['bare_python_ms']:.0f} ms")


def verdict_table(results: list[Verdict]) -> str:
    return table(["target", "result", "measured"], [[v.target, v.outcome, v.detail] for v in results])


def markdown(records: list[Record], header: str) -> str:
    sections = [header,
                "## Targets", verdict_table(verdicts(records)),
                "## RPC: `system.ping`", rpc_table(records),
                "## SSE: `echo.ping` publisher, live subscribers", sse_table(records),
                "## Memory", memory_table(records),
                "## Cold start: spawn to first `system.ping`", cold_table(records),
                "## Command-line latency: one-shot `rpc system.ping`", cli_table(records)]
    skipped = find(records, bench="eventlog_skipped")
    sections += ["## Event log: durable publish and replay (bench/bench_eventlog.py, in process)",
                 f"(skipped: {skipped['reason']})" if skipped else eventlog_table(records)]
    return "\n\n".join(sections) + "\n"


def compact(record: Record) -> str:
    return json.dumps(record, separators=(",", ":"), default=str)
