"""Sessions that outlive the daemon (issue 15, items 1-3), over the wire with real daemons.

A session's definition, state, turn queue and resume token are kept in ``daemon.db``. After
a restart, even after ``kill -9``, the session is listed again: the turn that was running is
reported ``interrupted`` and never run twice, queued turns run, and ``session send`` works.
A parked session can be restarted with fresh backoff.
"""

from __future__ import annotations

import json
import signal

import pytest

from cc_daemon.client import SessionNotAccepting
from helpers.frontend import Watcher, client_of, path_with_fake_claude, wait_state


def test_kill_9_mid_turn_with_a_turn_queued(subprocess_daemon, tmp_path):
    first = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    client = client_of(first, "repl")
    session_id = client.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]
    watcher = Watcher(client, session_id, since=0)
    running = client.call("session.send", session_id=session_id, text="run ls")["turn_id"]
    watcher.wait("permission_request", turn_id=running)  # mid-turn: it waits for an answer
    queued = client.call("session.send", session_id=session_id, text="hello")["turn_id"]
    watcher.wait("turn_queued", turn_id=queued)
    watcher.close()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    second = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=first.data_dir)
    client = client_of(second, "repl")
    assert [s["session_id"] for s in client.call("session.list")["sessions"]] == [session_id]
    watcher = Watcher(client, session_id, since=0)
    interrupted = watcher.wait("turn_done", turn_id=running)["data"]
    assert interrupted["status"] == "interrupted" and "not run again" in interrupted["reason"]
    resumed = watcher.wait("session_resumed")["data"]
    assert resumed["state"] == "resuming" and resumed["queued"] == 1 and resumed["fresh"] is True
    assert watcher.wait("turn_done", turn_id=queued)["data"]["status"] == "completed"
    assert "hello" in watcher.text_of(queued).lower()
    assert len(watcher.find("turn_started", turn_id=running)) == 1  # started once, before the kill
    again = client.call("session.send", session_id=session_id, text="hello again")["turn_id"]
    assert watcher.wait("turn_done", turn_id=again)["data"]["status"] == "completed"
    # The request the interrupted turn had asked is not left dangling.
    cancelled = [e for e in watcher.find("permission_cancelled") if "daemon restarted" in e["data"]["reason"]]
    assert len(cancelled) == 1
    watcher.close()


def test_a_graceful_restart_keeps_sessions_and_a_close_forgets_them(subprocess_daemon, tmp_path):
    first = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    client = client_of(first, "repl")
    kept = client.call("session.create", runtime="demo", cwd=str(tmp_path), name="kept")["session_id"]
    closed = client.call("session.create", runtime="demo", cwd=str(tmp_path), name="closed")["session_id"]
    client.call("session.close", session_id=closed)
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(10) == 0

    second = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=first.data_dir)
    client = client_of(second, "repl")
    listed = {s["session_id"]: s for s in client.call("session.list")["sessions"]}
    assert list(listed) == [kept] and listed[kept]["name"] == "kept"
    wait_state(client, kept, "idle")
    watcher = Watcher(client, kept, since=0)
    turn = client.call("session.send", session_id=kept, text="hello")["turn_id"]
    assert watcher.wait("turn_done", turn_id=turn)["data"]["status"] == "completed"
    watcher.close()


def test_a_parked_session_restarts_with_fresh_backoff_and_keeps_why(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id = client.call("session.create", runtime="custom", cwd=str(tmp_path),
                             args=["sh", "-c", "exit 78"])["session_id"]
    watcher = Watcher(client, session_id, since=0)
    wait_state(client, session_id, "parked")
    restarted = client.sessions.restart(session_id)
    assert restarted["state"] in ("starting", "parked")
    starting = watcher.wait("session_state", state="starting", previous="parked")["data"]
    assert starting["reason"].startswith("restarted by ") and "(it was parked: " in starting["reason"]
    watcher.wait("runner_parked", count=2)  # parked, restarted, parked again by the same exit 78
    wait_state(client, session_id, "parked")
    watcher.close()


def test_only_a_parked_session_can_be_restarted(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id = client.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]
    wait_state(client, session_id, "idle")
    with pytest.raises(SessionNotAccepting) as caught:
        client.sessions.restart(session_id)
    assert caught.value.data["state"] == "idle"


def test_a_resumed_claude_session_continues_its_conversation(subprocess_daemon, tmp_path):
    """The resume token a runtime reported (Claude Code's session id) is handed back after
    a daemon restart: the new claude process runs with --resume and that id."""
    log = tmp_path / "claude.jsonl"
    first = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    client = client_of(first, "repl")
    session_id = client.call("session.create", runtime="claude", cwd=str(tmp_path), env={
        "PATH": path_with_fake_claude(), "FAKE_CLAUDE_LOG": str(log)})["session_id"]
    watcher = Watcher(client, session_id, since=0)
    turn = client.call("session.send", session_id=session_id, text="hello")["turn_id"]
    watcher.wait("turn_done", turn_id=turn)
    claude_session = next(e["data"]["message"] for e in watcher.find("runtime_log")
                          if e["data"]["message"].startswith("claude session ")).split()[2].rstrip(",")
    watcher.close()
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(10) == 0

    second = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=first.data_dir)
    client = client_of(second, "repl")
    watcher = Watcher(client, session_id, since=0)
    assert watcher.wait("session_resumed")["data"]["resume_token"] is True
    wait_state(client, session_id, "idle")
    after = client.call("session.send", session_id=session_id, text="and now?")["turn_id"]
    assert watcher.wait("turn_done", turn_id=after)["data"]["status"] == "completed"
    argvs = [json.loads(line)["argv"] for line in log.read_text().splitlines() if "argv" in json.loads(line)]
    assert "--resume" not in argvs[0] and argvs[1][argvs[1].index("--resume") + 1] == claude_session
    watcher.close()
