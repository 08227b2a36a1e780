"""Sessions end to end over HTTP with real daemons and the ``demo`` runtime: turns,
originator-only permission answers, idempotency, limits, cancel, unattended policies,
close and shutdown."""

from __future__ import annotations

import json
import os
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_daemon import __version__
from cc_daemon.client import InvalidParams, NotOriginator, RpcCallError
from cc_daemon.errors import (APPROVER_REFUSED, GIT_MISSING, NOT_A_GIT_REPOSITORY, RUNTIME_UNAVAILABLE, SESSION_LIMIT,
                              SESSION_NOT_ACCEPTING, SESSION_NOT_FOUND, TURN_QUEUE_FULL, WORKTREE_UNAVAILABLE)
from cc_daemon.supervisor import SupervisionConfig

from helpers.daemons import cli, wait_for
from helpers.frontend import Watcher, client_of, is_alive, wait_state

FAST = SupervisionConfig(backoff_base_s=0.05, backoff_max_s=0.2, stop_grace_s=0.5, kill_after_s=1.0,
                         cancel_grace_s=1.0)


@pytest.fixture
def fast_daemon(make_daemon):
    return make_daemon(supervision=FAST)


def create(client, cwd, **params):
    return client.call("session.create", runtime=params.pop("runtime", "demo"), cwd=str(cwd), **params)


def rpc_error(call) -> RpcCallError:
    with pytest.raises(RpcCallError) as caught:
        call()
    return caught.value


def test_two_frontends_drive_and_watch_and_only_the_originator_answers(daemon, tmp_path):
    driver, watcher_client = client_of(daemon, "repl"), client_of(daemon, "web")
    session_id = create(driver, tmp_path, name="pair")["session_id"]
    watcher = Watcher(watcher_client, session_id, since=0)

    turn_id = driver.call("session.send", session_id=session_id, text="write approved.txt hello")["turn_id"]
    request = watcher.wait("permission_request", turn_id=turn_id)
    request_id = request["data"]["request_id"]
    assert request["session_id"] == session_id and request["data"]["tool"] == "Write"
    assert "client_id" not in request["originator"]  # the watcher's copy hides the driver's id

    # The watcher may see the request but not answer it: 403 with -32001, over the raw wire too.
    raw = daemon.post({"jsonrpc": "2.0", "id": 7, "method": "permission.answer",
                       "params": {"request_id": request_id, "result": {"approve": True}}},
                      headers=daemon.headers(**{"X-Client-Id": watcher_client.client_id}))
    assert raw.status_code == 403 and raw.json()["error"]["code"] == -32001
    with pytest.raises(NotOriginator):
        watcher_client.call("permission.answer", request_id=request_id, result={"approve": True})
    assert wait_state(driver, session_id, "waiting_permission")

    driver.call("permission.answer", request_id=request_id, result={"approve": True})
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "completed"
    assert (tmp_path / "approved.txt").read_text() == "hello\n"
    assert watcher.find("tool_start", turn_id=turn_id)[0]["data"]["tool"] == "Write"
    assert watcher.find("tool_end", turn_id=turn_id)[0]["data"]["ok"] is True

    denied = driver.call("session.send", session_id=session_id, text="run echo ran > ran.txt")["turn_id"]
    request_id = watcher.wait("permission_request", turn_id=denied)["data"]["request_id"]
    driver.call("permission.answer", request_id=request_id, result={"approve": False, "reason": "not today"})
    assert watcher.wait("turn_done", turn_id=denied)["data"]["status"] == "completed"
    assert not (tmp_path / "ran.txt").exists()
    assert "permission denied (not today)" in watcher.text_of(denied)
    assert not watcher.find("tool_start", turn_id=denied)

    approved = driver.call("session.send", session_id=session_id, text="run echo ran > ran.txt")["turn_id"]
    request_id = watcher.wait("permission_request", turn_id=approved)["data"]["request_id"]
    driver.call("permission.answer", request_id=request_id, result={"approve": True})
    watcher.wait("turn_done", turn_id=approved)
    assert (tmp_path / "ran.txt").read_text() == "ran\n"
    watcher.close()


def test_a_turn_streams_in_chunks_in_order_with_usage(tcp_daemon, tmp_path):
    driver = client_of(tcp_daemon, "repl")
    session_id = create(driver, tmp_path)["session_id"]
    watcher = Watcher(client_of(tcp_daemon, "web"), session_id, since=0)
    turn = driver.call("session.send", session_id=session_id, text="hello there, daemon")
    done = watcher.wait("turn_done", turn_id=turn["turn_id"])
    assert done["data"]["usage"] == {"input_tokens": 3, "output_tokens": 5, "cost_usd": 0.0}
    assert len(watcher.find("text_chunk", turn_id=turn["turn_id"])) == 5
    assert watcher.text_of(turn["turn_id"]) == "You said: hello there, daemon"
    order = watcher.types(lambda event: event["type"] != "runtime_log")
    assert order[:2] == ["session_created", "runner_started"]
    for earlier, later in (("turn_queued", "turn_started"), ("turn_started", "text_chunk"),
                           ("text_chunk", "turn_done")):
        assert order.index(earlier) < order.index(later)
    assert all(event["session_id"] == session_id for event in watcher.events)
    info = driver.call("session.get", session_id=session_id)
    assert info["usage"]["output_tokens"] == 5 and info["turns"] == 1
    assert any("demo runtime: pid" in line for line in info["stderr_tail"])
    watcher.close()


def test_the_originator_sees_its_own_id_on_its_turn_events(tcp_daemon, tmp_path):
    driver = client_of(tcp_daemon, "repl")
    session_id = create(driver, tmp_path)["session_id"]
    own = Watcher(driver, session_id, since=0)
    turn_id = driver.call("session.send", session_id=session_id, text="hi")["turn_id"]
    done = own.wait("turn_done", turn_id=turn_id)
    assert done["originator"]["client_id"] == driver.client_id and done["originator"]["kind"] == "repl"
    own.close()


def test_message_id_is_an_idempotency_key(tcp_daemon, tmp_path):
    driver = client_of(tcp_daemon, "repl")
    session_id = create(driver, tmp_path)["session_id"]
    first = driver.call("session.send", session_id=session_id, text="once", message_id="m-1")
    again = driver.call("session.send", session_id=session_id, text="once", message_id="m-1")
    other = driver.call("session.send", session_id=session_id, text="twice", message_id="m-2")
    assert first == again and first["message_id"] == "m-1"
    assert other["turn_id"] != first["turn_id"]
    watcher = Watcher(client_of(tcp_daemon, "web"), session_id, since=0)
    watcher.wait("turn_done", turn_id=other["turn_id"])
    assert len(watcher.find("turn_queued", message_id="m-1")) == 1
    assert len(watcher.find("turn_done")) == 2
    watcher.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=300))
def test_any_text_comes_back_exactly_through_the_pipeline(tcp_daemon, tmp_path, text):
    """Arbitrary Unicode survives JSON-RPC, the runtime protocol, chunking and SSE."""
    client = client_of(tcp_daemon, "repl")
    if not hasattr(tcp_daemon, "echo_session"):
        tcp_daemon.echo_session = create(client, tmp_path)["session_id"]
    session_id = tcp_daemon.echo_session
    events = list(client.sessions.turn(session_id, "echo: " + text, read_timeout=10))
    turn_id = events[-1]["data"]["turn_id"]
    streamed = "".join(event["data"]["text"] for event in events
                       if event["type"] == "text_chunk" and event["data"]["turn_id"] == turn_id)
    assert streamed == "You said: echo: " + text


def test_session_limit_refuses_with_a_domain_error_until_one_closes(make_daemon, tmp_path):
    running = make_daemon(max_sessions=2, supervision=FAST)
    client = client_of(running, "repl")
    first = create(client, tmp_path)["session_id"]
    create(client, tmp_path)
    error = rpc_error(lambda: create(client, tmp_path))
    assert error.code == SESSION_LIMIT and error.data == {"limit": 2}
    assert "Too many sessions" in error.message
    client.call("session.close", session_id=first)
    assert create(client, tmp_path)["state"] == "starting"


def test_serve_flags_set_the_session_limits(subprocess_daemon, tmp_path):
    client = client_of(subprocess_daemon("--max-sessions", "1", "--max-queued-turns", "1"), "repl")
    session_id = create(client, tmp_path)["session_id"]
    assert rpc_error(lambda: create(client, tmp_path)).data["limit"] == 1
    client.call("session.send", session_id=session_id, text="sleep 30")
    wait_state(client, session_id, "busy")
    client.call("session.send", session_id=session_id, text="queued")
    error = rpc_error(lambda: client.call("session.send", session_id=session_id, text="one too many"))
    assert error.code == TURN_QUEUE_FULL and error.data["limit"] == 1
    client.call("session.close", session_id=session_id)


def test_turn_queue_limit_and_cancelling_queued_and_running_turns(make_daemon, tmp_path):
    running = make_daemon(max_queued_turns=2, supervision=FAST)
    client = client_of(running, "repl")
    session_id = create(client, tmp_path)["session_id"]
    watcher = Watcher(client_of(running, "web"), session_id, since=0)
    busy = client.call("session.send", session_id=session_id, text="sleep 30")["turn_id"]
    watcher.wait("turn_started", turn_id=busy)
    queued = [client.call("session.send", session_id=session_id, text=f"q{n}")["turn_id"] for n in range(2)]
    error = rpc_error(lambda: client.call("session.send", session_id=session_id, text="one too many"))
    assert error.code == TURN_QUEUE_FULL and error.data["limit"] == 2

    dropped = client.call("session.cancel", session_id=session_id, turn_id=queued[0])
    assert dropped == {"session_id": session_id, "cancelled": True, "turn_id": queued[0]}
    assert watcher.wait("turn_done", turn_id=queued[0])["data"]["status"] == "cancelled"
    cancelled = client.call("session.cancel", session_id=session_id)
    assert cancelled["turn_id"] == busy
    done = watcher.wait("turn_done", turn_id=busy)
    assert done["data"]["status"] == "cancelled" and done["data"]["reason"] == "cancelled by client"
    assert watcher.wait("turn_cancel_requested", turn_id=busy)["data"]["by"]
    assert watcher.wait("turn_done", turn_id=queued[1])["data"]["status"] == "completed"
    assert not watcher.find("turn_started", turn_id=queued[0])
    assert client.call("session.cancel", session_id=session_id)["cancelled"] is False
    watcher.close()


def test_max_turn_s_cancels_a_turn_that_runs_too_long(fast_daemon, tmp_path):
    client = client_of(fast_daemon, "repl")
    session_id = create(client, tmp_path, max_turn_s=0.3)["session_id"]
    watcher = Watcher(client_of(fast_daemon, "web"), session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text="sleep 30")["turn_id"]
    done = watcher.wait("turn_done", turn_id=turn_id)
    assert done["data"]["status"] == "cancelled" and "max_turn_s" in done["data"]["reason"]
    assert wait_state(client, session_id, "idle")
    watcher.close()


@pytest.mark.parametrize("policy, approve", [("deny", False), ("allow", True)])
def test_unattended_policies_answer_on_the_record(fast_daemon, tmp_path, policy, approve):
    client = client_of(fast_daemon, "agent_runner")
    session_id = create(client, tmp_path, mode="unattended", approve_via=policy)["session_id"]
    watcher = Watcher(client_of(fast_daemon, "web"), session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text="write out.txt by policy")["turn_id"]
    watcher.wait("turn_done", turn_id=turn_id)
    request = watcher.find("permission_request", turn_id=turn_id)[0]
    assert request["data"]["mode"] == "unattended" and request["originator"]["client_ref"] == "policy"
    answered = watcher.find("permission_answered", request_id=request["data"]["request_id"])[0]
    assert answered["data"]["answer"] == {"approve": approve, "reason": f"approve_via={policy}"}
    assert (tmp_path / "out.txt").exists() is approve
    assert client.call("permission.list")["pending"] == []
    watcher.close()


def test_unattended_approval_delegated_to_a_client_kind(fast_daemon, tmp_path):
    runner, bridge, intruder = (client_of(fast_daemon, kind) for kind in ("agent_runner", "bridge", "web"))
    session_id = create(runner, tmp_path, mode="unattended", approve_via="bridge")["session_id"]
    watcher = Watcher(client_of(fast_daemon, "web"), session_id, since=0)

    # No bridge has claimed approval yet: the request is denied at once, on the record.
    early = runner.call("session.send", session_id=session_id, text="write early.txt x")["turn_id"]
    watcher.wait("turn_done", turn_id=early)
    assert not (tmp_path / "early.txt").exists()
    assert "no client of kind 'bridge'" in watcher.find("permission_answered")[0]["data"]["answer"]["reason"]

    error = rpc_error(lambda: intruder.call("session.claim_approver", session_id=session_id))
    assert error.code == APPROVER_REFUSED and error.data["expected_kind"] == "bridge"
    claimed = bridge.call("session.claim_approver", session_id=session_id)
    assert claimed["approver"]["kind"] == "bridge"
    other_bridge = client_of(fast_daemon, "bridge")
    assert rpc_error(lambda: other_bridge.call("session.claim_approver", session_id=session_id)).code == \
        APPROVER_REFUSED

    turn_id = runner.call("session.send", session_id=session_id, text="write late.txt y")["turn_id"]
    request = watcher.wait("permission_request", turn_id=turn_id)
    assert request["originator"]["client_ref"] == claimed["approver"]["client_ref"]
    assert request["data"]["expires_at"] - request["ts"] == pytest.approx(300, abs=1)  # unattended timeout
    with pytest.raises(NotOriginator):  # the turn's sender is not the approver here
        runner.call("permission.answer", request_id=request["data"]["request_id"], result={"approve": True})
    assert [p["request_id"] for p in bridge.call("permission.list")["pending"]] == [request["data"]["request_id"]]
    bridge.call("permission.answer", request_id=request["data"]["request_id"], result={"approve": True})
    watcher.wait("turn_done", turn_id=turn_id)
    assert (tmp_path / "late.txt").read_text() == "y\n"
    watcher.close()


def test_close_stops_the_runtime_and_the_session_stays_readable(fast_daemon, tmp_path):
    client = client_of(fast_daemon, "repl")
    session_id = create(client, tmp_path)["session_id"]
    pid = wait_state(client, session_id, "idle")["runner"]["pid"]
    closed = client.call("session.close", session_id=session_id)
    assert closed["state"] == "stopped" and closed["runner"]["pid"] is None
    assert closed["runner"]["last_exit"]["exit_code"] == 0 and not is_alive(pid)
    error = rpc_error(lambda: client.call("session.send", session_id=session_id, text="hello?"))
    assert error.code == SESSION_NOT_ACCEPTING and error.data["state"] == "stopped"
    history = client.call("session.history", session_id=session_id)["events"]
    types = [event["type"] for event in history]
    assert types[-3:] == ["runner_stopped", "session_state", "session_closed"]
    assert history[-3]["data"]["how"] == "stop"
    assert [s["state"] for s in client.call("session.list")["sessions"] if s["session_id"] == session_id] == ["stopped"]
    client.call("session.close", session_id=session_id)  # closing again is harmless


def test_history_pages_through_one_sessions_events_only(fast_daemon, tmp_path):
    client = client_of(fast_daemon, "repl")
    mine, other = (create(client, tmp_path)["session_id"] for _ in range(2))
    for session_id in (mine, other):
        watcher = Watcher(client, session_id, since=0)
        watcher.wait("turn_done", turn_id=client.call("session.send", session_id=session_id, text="a b c")["turn_id"])
        watcher.close()
    everything = client.call("session.history", session_id=mine, limit=1000)
    assert everything["next_since"] is None
    assert {event["session_id"] for event in everything["events"]} == {mine}
    pages, since = [], 0
    while since is not None:
        page = client.call("session.history", session_id=mine, since=since, limit=4)
        pages.extend(page["events"])
        since = page["next_since"]
    assert pages == everything["events"]
    assert client.call("session.history", session_id="ses_unknown")["events"] == []


def test_bad_requests_get_clear_errors(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    with pytest.raises(InvalidParams) as relative:
        create(client, "relative/dir")
    assert relative.value.data["field"] == "cwd"
    with pytest.raises(InvalidParams, match="not a directory"):
        create(client, tmp_path / "missing")
    with pytest.raises(InvalidParams, match="approve_via"):
        create(client, tmp_path, approve_via="allow")
    with pytest.raises(InvalidParams, match="restart"):
        create(client, tmp_path, restart="always")
    unknown = rpc_error(lambda: create(client, tmp_path, runtime="nope"))
    assert unknown.code == RUNTIME_UNAVAILABLE and "demo" in unknown.message
    missing = rpc_error(lambda: client.call("session.get", session_id="ses_0000000000000000"))
    assert missing.code == SESSION_NOT_FOUND and missing.data == {"session_id": "ses_0000000000000000"}
    methods = {m["name"]: m for m in client.call("rpc.discover")["methods"]}
    assert {"session.create", "session.send", "session.cancel", "session.close", "session.list", "session.get",
            "session.history", "session.runtimes", "session.claim_approver"} <= set(methods)
    assert {e["code"] for e in methods["session.create"]["errors"]} == {
        SESSION_LIMIT, RUNTIME_UNAVAILABLE, SESSION_NOT_ACCEPTING, NOT_A_GIT_REPOSITORY, WORKTREE_UNAVAILABLE,
        GIT_MISSING}
    assert client.call("system.ping") == "pong"


def test_daemon_shutdown_stops_sessions_and_loses_no_event(make_daemon, tmp_path):
    running = make_daemon(supervision=FAST)
    client = client_of(running, "repl")
    session_ids = [create(client, tmp_path)["session_id"] for _ in range(2)]
    pids = [wait_state(client, session_id, "idle")["runner"]["pid"] for session_id in session_ids]
    busy = client.call("session.send", session_id=session_ids[0], text="sleep 30")["turn_id"]
    watcher = Watcher(client_of(running, "web"), since=0)
    watcher.wait("turn_started", turn_id=busy)
    running.daemon.stop()
    watcher.wait("shutdown")
    order = watcher.types()
    for session_id in session_ids:
        closed = [e for e in watcher.events if e["type"] == "session_closed" and e.get("session_id") == session_id]
        assert closed and closed[0]["data"]["reason"] == "daemon shutdown"
    assert order.index("shutdown") == len(order) - 1
    assert watcher.find("turn_done", turn_id=busy)[0]["data"]["status"] == "cancelled"
    assert not any(is_alive(pid) for pid in pids)


def test_status_and_daemon_log_list_runtimes_and_sessions(subprocess_daemon, tmp_path):
    running = subprocess_daemon()
    client = client_of(running, "cli")
    session_id = create(client, tmp_path)["session_id"]
    wait_state(client, session_id, "idle")
    result = cli("daemon", "status", "--json", "--data-dir", str(running.data_dir))
    status = json.loads(result.stdout)
    assert status["sessions"] == {"idle": 1}
    runtimes = {runtime["name"]: runtime for runtime in status["runtimes"]}
    assert runtimes["demo"]["available"] and runtimes["demo"]["version"] == __version__
    assert runtimes["command"]["available"] and "claude" in runtimes
    text = cli("daemon", "status", "--data-dir", str(running.data_dir)).stdout
    assert "sessions: 1 idle" in text and f"  demo: {__version__} " in text
    assert "  claude: " in text  # available or not, with the reason
    log = (running.data_dir / "logs" / "daemon.log").read_text()
    assert "runtime demo: " in log and "runtime command: " in log and "runtime claude: " in log


def fill_the_disk(running) -> None:
    """Cap daemon.db at its size and make the log fail on a write that needs a new page."""
    running.daemon.event_log._db.execute("PRAGMA max_page_count = 1")
    assert running.rpc("echo.ping", {"pad": "x" * 50000})["error"]["code"] == -32003


def free_the_disk(running) -> None:
    running.daemon.event_log._db.execute("PRAGMA max_page_count = 1073741823")
    wait_for(lambda: running.get("/readyz").status_code == 200, message="the event log recovering")


def test_a_failing_event_log_refuses_new_sessions_and_turns_and_counts_what_runtimes_lose(fast_daemon, tmp_path):
    client = client_of(fast_daemon, "repl")
    session_id = create(client, tmp_path)["session_id"]
    wait_state(client, session_id, "idle")
    pid = client.call("session.get", session_id=session_id)["runner"]["pid"]
    fill_the_disk(fast_daemon)

    refused = rpc_error(lambda: client.call("session.send", session_id=session_id, text="hello"))
    assert refused.code == -32003 and "cannot store events" in refused.data["reason"]
    assert client.call("session.get", session_id=session_id)["turns"] == 0  # not half-accepted
    assert rpc_error(lambda: create(client, tmp_path)).code == -32003
    assert [s["session_id"] for s in client.call("session.list")["sessions"]] == [session_id]

    os.kill(pid, signal.SIGKILL)  # the crash and restart happen while nothing can be recorded
    wait_for(lambda: client.call("session.get", session_id=session_id)["runner"]["restarts"] >= 1,
             message="the supervisor restarting the runtime")
    free_the_disk(fast_daemon)
    watcher = Watcher(client, session_id, since=0)
    client.call("session.send", session_id=session_id, text="hello")
    notice = watcher.wait("events_unrecorded")
    assert notice["data"]["count"] >= 1 and "runner_crashed" in notice["data"]["types"]
    assert "disk is full" in notice["data"]["reason"]
    watcher.wait("turn_done")
    watcher.close()
