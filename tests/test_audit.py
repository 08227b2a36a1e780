"""The audit log under a flood (RFC 0002 §6; issue 12 finding 4).

Before: 16 threads sending failing requests got 93,743 refusals and left 21,291 lines,
several rotations ran at once (``ValueError: seek of closed file``), and slow connections
left NUL bytes in ``auth.jsonl``. Here every decision is a whole line or part of an exact
count in an aggregate line, and the files never hold more than their documented bound.
"""

from __future__ import annotations

from collections import Counter

from cc_daemon import API_VERSION, API_VERSION_HEADER
from cc_daemon.audit import LINES_PER_SECOND, AuditLog
from helpers.clock import FakeClock
from helpers.daemons import wait_for
from helpers.docs import rfc_text
from helpers.outsider import audit_files, audit_lines, decisions, flood, send

WRONG = "A" * 43
THREADS = 16


def refused(thread: int, n: int) -> dict[str, str]:
    """A wrong token, no token, or a foreign Host: the refusals anyone on the host can cause."""
    headers = {API_VERSION_HEADER: API_VERSION}
    kind = (thread + n) % 3
    if kind == 0:
        headers["Authorization"] = f"Bearer {WRONG}"
    elif kind == 2:
        headers["Host"] = "evil.example"
    return headers


def test_a_flood_of_refusals_loses_no_decision(tcp_daemon):
    seen = flood(tcp_daemon, THREADS, 300, refused)
    tcp_daemon.daemon.stop()  # the counts of the last second are written at the latest now
    assert set(seen) <= {401, 403, 429} and sum(seen.values()) == THREADS * 300
    lines = audit_lines(tcp_daemon.data_dir)  # each one parses: no torn line, no NUL
    assert decisions(lines, "denied") == seen[401] + seen[403]
    assert decisions(lines, "rate_limited") == seen[429]
    assert decisions(lines) == sum(seen.values())
    # A few lines a second carry the flood: at most LINES_PER_SECOND of them per second of
    # their own (two windows can meet in one wall-clock second), then the counts.
    single = [line for line in lines if "count" not in line]
    per_second = Counter(int(line["ts"]) for line in single)
    assert max(per_second.values()) <= 2 * LINES_PER_SECOND
    for line in lines:
        if "count" in line:
            assert line["peer"] == "loopback" and line["count"] >= 1 and line["since"] <= line["ts"]


def test_rotations_during_a_flood_lose_nothing(make_daemon, monkeypatch):
    """Before, rotations ran at once (``seek of closed file``) and their lines were lost."""
    monkeypatch.setattr(AuditLog, "MAX_BYTES", 512)  # a few lines a file: rotations all the time
    monkeypatch.setattr(AuditLog, "BACKUPS", 10_000)  # and none dropped, so every decision can be counted
    running = make_daemon("tcp")

    def refused_or_the_owner_on_a_new_connection(thread: int, n: int) -> dict[str, str]:
        if n % 10 == 0:  # the owner's successes are never counted away: a line each, many rotations
            return {**running.headers(), "Connection": "close"}
        return refused(thread, n)

    seen = flood(running, THREADS, 300, refused_or_the_owner_on_a_new_connection)
    running.daemon.stop()
    assert len(audit_files(running.data_dir)) > 100
    lines = audit_lines(running.data_dir)
    assert decisions(lines, "ok") == seen[200] == THREADS * 30
    assert decisions(lines) == sum(seen.values())


def test_a_flood_cannot_fill_the_disk(make_daemon, monkeypatch):
    monkeypatch.setattr(AuditLog, "MAX_BYTES", 512)  # a few lines a file: rotations all the time
    monkeypatch.setattr(AuditLog, "BACKUPS", 2)
    running = make_daemon("tcp")
    seen = flood(running, THREADS, 300, refused)
    running.daemon.stop()
    files = audit_files(running.data_dir)
    assert [path.name for path in files] == ["auth.jsonl.2", "auth.jsonl.1", "auth.jsonl"]
    assert all(path.stat().st_size <= AuditLog.MAX_BYTES for path in files)
    assert sum(path.stat().st_size for path in files) <= AuditLog.MAX_BYTES * (AuditLog.BACKUPS + 1)
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in files)
    assert 0 < decisions(audit_lines(running.data_dir)) <= sum(seen.values())  # and every kept line parses


def test_a_peers_refusals_past_the_limit_are_counted_and_written_once_its_second_ends(make_daemon):
    clock = FakeClock()
    running = make_daemon("tcp", clock=clock)
    answers = [send(running, WRONG, source=f"127.0.0.{n}").status for n in range(1, 13)]
    assert answers == [401] * 3 + [429] * 9
    lines = audit_lines(running.data_dir)
    assert [line["peer"] for line in lines] == [f"127.0.0.{n}" for n in range(1, LINES_PER_SECOND + 1)]
    clock.now += 1  # the second is over: the daemon's periodic flush writes its counts
    wait_for(lambda: len(audit_lines(running.data_dir)) > LINES_PER_SECOND, message="the aggregate line")
    aggregate = audit_lines(running.data_dir)[-1]
    assert {key: aggregate[key] for key in ("peer", "outcome", "reason", "count")} == {
        "peer": "loopback", "outcome": "rate_limited", "reason": "locked out after repeated failures", "count": 2}


def test_audit_records_each_decision_and_successes_once_per_connection(tcp_daemon):
    import http.client
    host, port = tcp_daemon.address[len("tcp://"):].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port))
    for _ in range(5):
        connection.request("POST", "/rpc", body='{"jsonrpc":"2.0","method":"system.ping","id":1}',
                           headers={**tcp_daemon.headers(), "X-Client-Kind": "repl"})
        connection.getresponse().read()
    connection.close()
    ok = [line for line in audit_lines(tcp_daemon.data_dir) if line["outcome"] == "ok"]
    assert len(ok) == 1
    line = ok[0]
    assert set(line) >= {"transport", "outcome", "peer", "reason", "uid", "ts"}
    assert line["peer"] == "127.0.0.1" and line["client_kind"] == "repl"


def test_the_owners_successes_always_get_their_line_even_in_a_flood(make_daemon):
    running = make_daemon("tcp", clock=FakeClock())  # one endless second: past 10 refusals all are counted
    for _ in range(LINES_PER_SECOND + 5):
        send(running, None)
    assert send(running, running.token).status == 200
    assert [line["outcome"] for line in audit_lines(running.data_dir)][-1] == "ok"


def test_no_audit_flag(make_daemon):
    running = make_daemon("tcp", audit=False)
    send(running, WRONG)
    send(running, running.token)
    assert audit_files(running.data_dir) == []



def test_rfc_0002_states_the_bounds_the_audit_log_keeps():
    text, mib = rfc_text("0002"), AuditLog.MAX_BYTES / 2**20
    assert f"the first {LINES_PER_SECOND} in a second" in text
    assert f"{mib:g} MiB, and {AuditLog.BACKUPS} old files are kept" in text
    assert f"{AuditLog.BACKUPS + 1} × {mib:g} MiB = {(AuditLog.BACKUPS + 1) * mib:g} MiB" in text
    assert f"At most {AuditLog.MAX_PEERS} peers are counted at once" in text
