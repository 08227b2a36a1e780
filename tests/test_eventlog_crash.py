"""Crash safety: ``kill -9`` of a daemon under load loses no acknowledged event, and a
subscriber resuming with ``Last-Event-ID`` after the restart receives each exactly once."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
import requests_unixsocket
import sseclient

from helpers.daemons import Running, short_tmpdir, wait_for

PUBLISHERS = 3


def hammer(running: Running, name: str, acknowledged: list[str], stop: threading.Event) -> None:
    """Publish ``echo.ping`` as fast as answers come; record each call the daemon acknowledged."""
    http = requests_unixsocket.Session()
    n = 0
    while not stop.is_set():
        seq = f"{name}-{n}"
        body = json.dumps({"jsonrpc": "2.0", "method": "echo.ping", "params": {"seq": seq}, "id": n})
        try:
            reply = http.post(running.base_url + "/rpc", data=body, headers=running.headers(), timeout=10).json()
        except (requests.RequestException, ValueError):
            return  # the daemon is gone: this call was never acknowledged
        if "result" in reply:
            acknowledged.append(seq)
        n += 1


def follow(running: Running, last_event_id: int, into: list[dict], until_id: int | None = None) -> None:
    """Append the stream's events to ``into`` until ``until_id`` is seen or the connection dies."""
    headers = {**running.headers(), "Last-Event-ID": str(last_event_id)}
    try:
        response = running.http.get(running.base_url + "/events", headers=headers, stream=True, timeout=(5, 10))
        for sse in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
            into.append(json.loads(sse.data))
            if until_id is not None and into[-1].get("id", 0) >= until_id:
                response.close()
                return
    except requests.RequestException:
        if until_id is not None:
            raise


def stored_seqs(running: Running, after_id: int) -> dict[int, str]:
    """id -> seq of every stored ping after ``after_id``, read back with events.query."""
    found: dict[int, str] = {}
    cursor: int | None = after_id
    while cursor is not None:
        page = running.rpc("events.query", {"after_id": cursor, "types": ["ping_received"], "limit": 1000})["result"]
        found.update((e["id"], e["data"]["params"]["seq"]) for e in page["events"])
        cursor = page["cursor"]
    return found


def crash_and_resume(start_daemon, root: Path, rng: random.Random, since: int) -> int:
    """One round: load, ``kill -9`` at a random point, restart, resume, check; returns the last id."""
    first = start_daemon(data_dir=root)
    seen_before: list[dict] = []
    reader = threading.Thread(target=follow, args=(first, since, seen_before), daemon=True)
    reader.start()
    acknowledged: list[str] = []
    stop = threading.Event()
    publishers = [threading.Thread(target=hammer, args=(first, f"p{k}", acknowledged, stop), daemon=True)
                  for k in range(PUBLISHERS)]
    for publisher in publishers:
        publisher.start()
    kill_after = rng.randint(1, 400)  # acknowledged calls: the random moment of the crash
    wait_for(lambda: len(acknowledged) >= kill_after, 20, message=f"{kill_after} acknowledged pings")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    stop.set()
    for thread in (*publishers, reader):
        thread.join(15)
    acknowledged_before_kill = list(acknowledged)

    second = start_daemon(data_dir=root)
    last = second.rpc("system.status")["result"]["last_event_id"]
    resume_from = max([since] + [e["id"] for e in seen_before])
    assert resume_from <= last, "an event a subscriber saw must not vanish in a crash"
    seen_after: list[dict] = []
    if resume_from < last:
        follow(second, resume_from, seen_after, until_id=last)

    received = seen_before + seen_after
    ids = [e["id"] for e in received]
    assert ids == sorted(set(ids)) and all(i > since for i in ids), "each id once, in order"
    assert not [e for e in received if e["type"] == "gap"]
    seqs = [e["data"]["params"]["seq"] for e in received if e["type"] == "ping_received"]
    assert len(seqs) == len(set(seqs)), "no event delivered twice"
    missing = set(acknowledged_before_kill) - set(seqs)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
    stored = stored_seqs(second, since)
    assert all(stored.get(e["id"]) == e["data"]["params"]["seq"] for e in received if e["type"] == "ping_received")
    second.process.send_signal(signal.SIGTERM)
    second.process.wait(10)
    return last


def test_kill_9_under_load_loses_no_acknowledged_event(subprocess_daemon):
    crash_and_resume(subprocess_daemon, short_tmpdir(), random.Random(), since=0)


@pytest.mark.slow
def test_kill_9_again_and_again_on_one_data_dir(subprocess_daemon):
    root, rng = short_tmpdir(), random.Random()
    deadline, last, rounds = time.monotonic() + 40, 0, 0
    while time.monotonic() < deadline and rounds < 15:
        newest = crash_and_resume(subprocess_daemon, root, rng, since=last)
        assert newest >= last, "ids only grow across restarts"
        last, rounds = newest, rounds + 1
    assert rounds >= 3
