"""GET /events: SSE framing, replay, Last-Event-ID, filters, gaps, heartbeats, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from helpers.daemons import wait_for
from helpers.sse import check_exact, open_stream, publish, read_until_event, stalled_reader, take


def test_frame_shape_matches_the_contract(daemon):
    response, events = open_stream(daemon, "?since=0")
    publish(daemon, 1)
    (event,) = take(events, 1)
    sse = event["sse"]
    assert sse.id == str(event["id"]) and sse.event == "ping_received"
    assert set(event) >= {"id", "ts", "type", "data"}
    assert event["data"]["params"] == {"n": 0}
    response.close()


def test_first_frame_is_retry_and_stream_is_chunked(daemon):
    response = daemon.get("/events", stream=True, timeout=(5, 5))
    assert response.headers.get("Transfer-Encoding") == "chunked"
    first = next(response.iter_content(chunk_size=None))
    assert first.startswith(b"retry: ")
    response.close()


def test_replay_then_live_tail_without_duplicates(daemon):
    publish(daemon, 30)
    response, events = open_stream(daemon, "?since=10")
    stop = threading.Event()

    def publish_more():
        publish(daemon, 40)
        stop.set()

    threading.Thread(target=publish_more).start()
    got = take(events, 20 + 40)
    ids = [e["id"] for e in got]
    assert ids == list(range(11, 71))
    response.close()


def test_last_event_id_header_wins_over_since(daemon):
    publish(daemon, 10)
    response, events = open_stream(daemon, "?since=2", headers={"Last-Event-ID": "7"})
    assert [e["id"] for e in take(events, 3)] == [8, 9, 10]
    response.close()


def test_no_since_means_live_only(daemon):
    publish(daemon, 5)
    response, events = open_stream(daemon)
    publish(daemon, 1, live=True)
    (event,) = take(events, 1)
    assert event["id"] == 6 and event["data"]["params"]["live"] is True
    response.close()


def test_a_burst_of_more_than_a_page_reaches_a_live_stream_without_more_news(tcp_daemon):
    """One commit makes more small events visible than one read of the log takes (512): the
    live tail goes on reading them, with no further publish to wake it."""
    response, events = open_stream(tcp_daemon)
    publish(tcp_daemon, 1)
    take(events, 1)  # caught up: the stream is handed to the live tail
    tcp_daemon.daemon.bus.publish_many([("tiny", {"n": n}) for n in range(1500)])
    started = time.monotonic()
    got = take(events, 1500)
    assert [event["data"]["n"] for event in got] == list(range(1500))
    assert time.monotonic() - started < 5
    response.close()


def test_live_streams_read_together_still_each_get_their_own_view(tcp_daemon):
    """Caught-up streams share the live tail's read and rendering; the originator's client id
    still appears in the originator's own streams only."""
    alice = tcp_daemon.post({"jsonrpc": "2.0", "method": "system.ping", "id": 1}).headers["X-Client-Id"]
    streams = {who: open_stream(tcp_daemon, headers={"X-Client-Id": alice} if who != "bob" else {})
               for who in ("alice", "alice again", "bob")}
    publish(tcp_daemon, 1)
    for _, events in streams.values():
        take(events, 1)  # caught up: every stream is handed to the live tail
    batch = [{"jsonrpc": "2.0", "method": "echo.ping", "params": {"n": n}, "id": n} for n in range(3)]
    assert tcp_daemon.post(batch, headers={**tcp_daemon.headers(), "X-Client-Id": alice}).status_code == 200
    seen = {who: take(events, 3) for who, (_, events) in streams.items()}
    for who in ("alice", "alice again"):
        assert [event["originator"]["client_id"] for event in seen[who]] == [alice] * 3
    assert all("client_id" not in event["originator"] and alice not in event["sse"].data for event in seen["bob"])
    for response, _ in streams.values():
        response.close()


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_bad_since_is_400_json(daemon, value):
    response = daemon.get(f"/events?since={value}")
    assert response.status_code == 400
    assert "since" in response.json()["detail"]


def test_type_filter(daemon):
    daemon.rpc("permission.demo", {"timeout_s": 600})
    publish(daemon, 3)
    response, events = open_stream(daemon, "?since=0&types=permission_request")
    (event,) = take(events, 1)
    assert event["type"] == "permission_request"
    publish(daemon, 2)
    daemon.rpc("permission.demo", {"timeout_s": 600})
    (event,) = take(events, 1)
    assert event["type"] == "permission_request" and event["id"] == 7
    response.close()


def test_gap_when_requested_ids_were_evicted(make_daemon):
    daemon = make_daemon("tcp", retention_events=16)
    publish(daemon, 40)
    wait_for(lambda: daemon.daemon.bus.oldest_id() == 25, message="retention to prune down to 16 events")
    response, events = open_stream(daemon, "?since=3")
    gap, first = take(events, 2)
    assert gap["type"] == "gap"
    assert gap["data"] == {"missed_from": 4, "missed_to": 24, "reason": "retention_prune"}
    assert gap["sse"].id == "24"
    assert first["id"] == 25
    response.close()


def test_stalled_reader_catches_up_from_the_log_and_never_blocks_publishers(tcp_daemon):
    lazy = stalled_reader(tcp_daemon)
    publish(tcp_daemon, 3000, pad="x" * 200)  # publishers are not slowed by the stalled reader
    assert tcp_daemon.rpc("system.ping")["result"] == "pong"
    assert check_exact(read_until_event(lazy, 2999), 3000) is False  # nothing lost: no gap at all
    lazy.close()


def test_stalled_reader_behind_retention_gets_an_exact_gap(make_daemon):
    daemon = make_daemon("tcp", retention_events=64, event_buffer=64)  # nothing older kept anywhere
    lazy = stalled_reader(daemon)
    # ~15 MB: more than the kernel's socket buffers can absorb, so the stream really stalls.
    publish(daemon, 3000, pad="x" * 5000)
    wait_for(lambda: daemon.daemon.bus.oldest_id() > 2900, message="retention to prune past the reader")
    assert check_exact(read_until_event(lazy, 2999), 3000) is True
    lazy.close()


def test_heartbeat_comment_when_idle(make_daemon):
    daemon = make_daemon("tcp", heartbeat_s=0.2)
    response = daemon.get("/events", stream=True, timeout=(5, 5))
    chunks = response.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"retry:")
    assert next(chunks) == b":\n\n"
    response.close()


def test_graceful_shutdown_sends_shutdown_event_and_is_never_replayed(make_daemon):
    daemon = make_daemon("unix")
    publish(daemon, 2)
    response, events = open_stream(daemon, "?since=0")
    take(events, 2)
    assert daemon.rpc("system.shutdown")["result"] == "shutdown_initiated"
    wait_for(lambda: daemon.daemon.wait(0), message="stop requested")
    stopper = threading.Thread(target=daemon.daemon.stop)
    stopper.start()
    (event,) = take(events, 1)
    assert event["type"] == "shutdown" and event["data"] == {"reason": "graceful"}
    assert event["sse"].id is None  # never a replayable id
    stopper.join(10)
    assert not daemon.address[len("unix://"):] or not __import__("os").path.exists(daemon.address[7:])
