"""/metrics worth scraping (issue 16 item 6), from a daemon started by the real CLI: RPC
latency histograms by method, SSE subscribers and lag, events published and replayed, gaps,
sessions by state, runtime restarts, pending permission requests, the event log's size and
age, audit decisions by outcome; all of it read back with prometheus_client's own parser,
and no label or value holding a token, a client id or anything a client wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from cc_daemon.client import Client, Endpoint
from helpers.daemons import short_tmpdir, wait_for

USER_TEXT = "user-text-7f3e"


def scrape(base: str, token: str) -> dict[str, dict]:
    response = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}", "Accept": "text/plain"},
                            timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    return families, response.text


def samples(family, name: str | None = None) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if name is None or s.name == name}


def test_a_scrape_parses_and_says_what_the_daemon_did(tmp_path):
    root = short_tmpdir()
    data_dir = root / "data"
    daemon = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(data_dir),
                               "--listen", "tcp://127.0.0.1:0", "--retention-events", "5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = daemon.stdout.readline().split(" on ", 1)[1].split(" (pid")[0]
        token = (data_dir / "daemon_token").read_text().strip()
        base = address.replace("tcp://", "http://")
        client = Client(Endpoint.from_address(address, token), kind="repl", client_id=None)
        for _ in range(3):
            client.call("system.ping")
        client.call("echo.ping", text=USER_TEXT)
        try:
            client.call(f"no.such.{USER_TEXT}")
        except Exception:
            pass
        requests.post(f"{base}/rpc", json={"jsonrpc": "2.0", "method": "system.ping", "id": 1},
                      headers={"Cheetahclaws-Api-Version": "0", "Authorization": "Bearer wrong"}, timeout=5)
        session_id = client.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]
        crashing = client.call("session.create", runtime="custom", cwd=str(tmp_path),
                               args=["sh", "-c", "exit 3"])["session_id"]
        wait_for(lambda: client.call("session.get", session_id=crashing)["state"] in ("restarting", "parked"),
                 message="the crashing runtime restarting")
        client.call("session.send", session_id=session_id, text="run true")  # asks permission: one pending
        wait_for(lambda: client.call("permission.list")["pending"], message="a pending permission request")
        for _ in range(8):
            client.call("echo.ping", n=1)  # retention keeps 5 of them: a reader from 0 gets a gap
        last = client.call("system.status")["last_event_id"]
        wait_for(lambda: client.call("events.query", limit=1)["oldest_id"] > 1, message="retention pruning")
        replay = requests.get(f"{base}/events?since=0", stream=True, timeout=10,
                              headers={"Cheetahclaws-Api-Version": "0", "Authorization": f"Bearer {token}"})
        seen = 0
        for line in replay.iter_lines():
            if line.startswith(b"id: "):
                seen = int(line[4:])
                if seen >= last:
                    break

        def scraped():
            families, _ = scrape(base, token)
            return families if samples(families["ccd_sse_subscribers"]) else None

        families = wait_for(scraped, message="a scrape with the open stream")
        _, text = scrape(base, token)

        durations = samples(families["ccd_rpc_duration_seconds"], "ccd_rpc_duration_seconds_count")
        assert durations[(("method", "system.ping"),)] == 3
        assert durations[(("method", "(unknown)"),)] == 1
        buckets = samples(families["ccd_rpc_duration_seconds"], "ccd_rpc_duration_seconds_bucket")
        ping_buckets = sorted((float(labels[0][1]), value) for labels, value in buckets.items()
                              if ("method", "system.ping") in labels)
        assert ping_buckets[-1] == (float("inf"), 3) and [v for _, v in ping_buckets] == sorted(v for _, v in ping_buckets)

        assert samples(families["ccd_sse_subscribers"])[()] == 1
        assert samples(families["ccd_sse_lag_events_max"])[()] >= 0
        published = samples(families["ccd_events_published"], "ccd_events_published_total")
        assert published[(("type", "ping_received"),)] == 9 and published[(("type", "session_created"),)] == 2
        assert samples(families["ccd_events_replayed"], "ccd_events_replayed_total")[()] >= 5
        assert samples(families["ccd_gaps"], "ccd_gaps_total")[()] == 1
        states = samples(families["ccd_sessions"])
        assert states[(("state", "waiting_permission"),)] == 1 and sum(states.values()) == 2
        assert samples(families["ccd_runtime_restarts"], "ccd_runtime_restarts_total")[()] >= 1
        assert samples(families["ccd_permission_requests_pending"])[()] == 1
        assert samples(families["ccd_event_log_events"])[()] == 5
        assert samples(families["ccd_event_log_bytes"])[()] > 0
        assert 0 <= samples(families["ccd_event_log_oldest_age_seconds"])[()] < 600
        decisions = samples(families["ccd_auth_decisions"], "ccd_auth_decisions_total")
        assert decisions[(("outcome", "ok"),)] >= 1 and sum(decisions.values()) > decisions[(("outcome", "ok"),)]

        for secret in (token, client.client_id, USER_TEXT, str(tmp_path)):
            assert secret not in text
        replay.close()
        client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0


def test_the_json_metrics_stay_the_references():
    root = short_tmpdir()
    daemon = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(root / "data"),
                               "--listen", "tcp://127.0.0.1:0", "--unauthenticated-metrics"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = daemon.stdout.readline().split(" on ", 1)[1].split(" (pid")[0].replace("tcp://", "http://")
        body = requests.get(f"{base}/metrics", timeout=5).json()
        assert set(body) == {"uptime_s", "model", "active_sessions", "circuits", "daily_tokens", "daily_cost_usd"}
        assert json.dumps(body)  # plain JSON
        started = time.monotonic()
        text = requests.get(f"{base}/metrics", headers={"Accept": "text/plain"}, timeout=5).text
        assert time.monotonic() - started < 5 and "ccd_event_log_oldest_age_seconds" not in text  # empty log
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
