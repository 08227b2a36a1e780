"""The benchmark code still runs: one very short measurement of each kind against real daemons.

This keeps bench/ from rotting; it asserts that measurements happen and that events are
delivered exactly once, never how fast anything is (bench/README.md for the numbers).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not an installed package

from bench import ceiling, report, sse  # noqa: E402
from bench.loadgen import HttpConnection, Target, run_rpc  # noqa: E402


def target_of(running) -> Target:
    return Target("cc_daemon", running.address, running.token).with_client_id()


def test_rpc_load_against_the_daemon(daemon):
    target = target_of(daemon)
    for keep_alive in (True, False):
        result = run_rpc(target, clients=2, keep_alive=keep_alive, duration=0.3, warmup=0.1, processes=1)
        assert result.errors == 0
        assert result.calls > 0
        summary = result.summary()
        assert summary["calls"] == result.calls and summary["p99_ms"] >= summary["p50_ms"] > 0


def test_fanout_delivers_every_event_once_in_order(tcp_daemon):
    result = sse.run_fanout(target_of(tcp_daemon), 3, events=40, processes=1)
    summary = result.summary()
    assert summary["published"] == 40
    assert (summary["lost"], summary["duplicated"], summary["reordered"]) == (0, 0, 0)
    assert all(stream["distinct"] == 40 for stream in result.streams)


def test_paused_reader_is_accounted_for(tcp_daemon):
    result = sse.run_fanout(target_of(tcp_daemon), 1, events=30, rcvbuf=4096, pause_s=0.1, pad_bytes=512)
    assert result.summary()["lost"] == 0


def test_ceiling_answers_the_load_generator():
    server = ceiling.TcpCeiling(("127.0.0.1", 0), ceiling.FixedAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = Target("ceiling", f"tcp://127.0.0.1:{server.server_address[1]}")
        with HttpConnection(target) as conn:
            assert conn.call(b"{}").body == ceiling.BODY
        assert run_rpc(target, clients=1, keep_alive=True, duration=0.2, warmup=0.05, processes=1).calls > 0
    finally:
        server.shutdown()
        server.server_close()


def test_report_renders_tables_and_verdicts(tcp_daemon):
    records = [{"bench": "rpc", "server": name, "transport": "tcp", "keepalive": True, "clients": 16,
                **run_rpc(target_of(tcp_daemon), 1, True, 0.2, 0.05, processes=1).summary()}
               for name in (report.CCD, report.CEILING)]
    text = report.markdown(records, "# smoke")
    assert "| tcp | on | 16 |" in text
    verdict = report.verdicts(records)[0]
    assert verdict.outcome in ("PASS", "FAIL") and "ceiling" in verdict.detail
    assert {v.outcome for v in report.verdicts(records)[1:]} == {"N/A"}


@pytest.mark.parametrize("records, expected", [
    ([{"bench": "eventlog", "name": "publish batched", "events_per_s": 150_000.0}], "PASS"),
    ([{"bench": "eventlog", "name": "publish unbatched", "events_per_s": 20_000}], "FAIL"),
    ([{"bench": "eventlog", "name": "replay", "events_per_s": 900_000}], "N/A"),
    ([{"bench": "eventlog_skipped", "reason": "not there"}], "N/A"),
])
def test_durable_publish_verdict_reads_eventlog_lines(records, expected):
    assert report.verdicts(records)[3].outcome == expected


def test_cli_latency_times_every_command_against_the_daemon(unix_daemon, tmp_path):
    from bench import cli, servers

    server = servers.Server("cc_daemon", None, target_of(unix_daemon), tmp_path)
    medians = cli.measure(server, Path(__file__).resolve().parent.parent, runs=1)
    assert {"bare_python", "cli_rpc_ping"} <= set(medians) and all(ms > 0 for ms in medians.values())


def test_runtime_latency_delivers_every_line_once_to_every_subscriber(capsys):
    from bench import runtime_latency

    assert runtime_latency.main(["--sessions", "2", "--subscribers", "2", "--seconds", "0.2", "--burst", "40"]) == 0
    phases = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [phase["phase"] for phase in phases] == ["paced", "flat out"]
    assert [phase["lines_written"] for phase in phases] == [2 * 100, 2 * 40]  # 1000/2 lines/s for 0.2 s
    assert all(phase["lost"] == 0 and phase["repeated"] == 0 and phase["p99_ms"] > 0 for phase in phases)
