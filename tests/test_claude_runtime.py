"""The ``claude`` runtime against a fake Claude Code that speaks its host protocol (issue 17).

One claude process per session in stream-json input mode; every tool call claude's own
rules would ask a person about becomes a daemon permission request owned by the turn's
originator, and the answer goes back as claude's control response. All over the wire, with
the fake in ``fakes/claude`` playing the CLI (control requests, withdrawals, interrupts,
a CLI that dies mid-request, lines that are not JSON).
"""

from __future__ import annotations

import json

import pytest

from cc_daemon.client import NotOriginator
from cc_daemon.runtimes.claude import BASE_ARGS, deny_message
from helpers.frontend import Watcher, client_of, path_with_fake_claude


def claude_session(daemon, tmp_path, client, **env: str) -> tuple[str, Watcher]:
    log = tmp_path / "claude-calls.jsonl"
    session_id = client.call("session.create", runtime="claude", cwd=str(tmp_path),
                             args=["--permission-mode", "default"],
                             env={"PATH": path_with_fake_claude(), "FAKE_CLAUDE_LOG": str(log), **env})["session_id"]
    return session_id, Watcher(client, session_id, since=0)


def calls(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "claude-calls.jsonl").read_text().splitlines()]


def test_one_claude_process_serves_every_turn_of_a_session(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, client)
    first = client.call("session.send", session_id=session_id, text="what is here?")["turn_id"]
    done = watcher.wait("turn_done", turn_id=first)["data"]
    assert done["status"] == "completed"
    assert done["usage"] == {"input_tokens": 12, "output_tokens": 87, "cache_read_input_tokens": 24080,
                             "cache_creation_input_tokens": 1520, "cost_usd": 0.01842, "duration_ms": 5321}
    assert watcher.text_of(first) == "Looking into it: what is here?There are two entries: README.md and src."
    assert watcher.find("tool_end", turn_id=first)[0]["data"]["output"] == "README.md\nsrc"
    second = client.call("session.send", session_id=session_id, text="and now?")["turn_id"]
    assert watcher.wait("turn_done", turn_id=second)["data"]["status"] == "completed"
    logged = calls(tmp_path)
    argvs = [entry["argv"] for entry in logged if "argv" in entry]
    assert argvs == [[*BASE_ARGS, "--permission-mode", "default"]]  # one process for both turns
    users = [entry["stdin"]["message"]["content"] for entry in logged
             if entry.get("stdin", {}).get("type") == "user"]
    assert users == ["what is here?", "and now?"]
    assert logged[1]["stdin"]["request"]["subtype"] == "initialize"
    watcher.close()


def test_the_originator_approves_a_tool_call_while_another_client_is_refused(tcp_daemon, tmp_path):
    terminal, browser = client_of(tcp_daemon, "repl"), client_of(tcp_daemon, "web")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, terminal)
    turn_id = terminal.call("session.send", session_id=session_id, text="ask: rm -rf build")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    assert asked["tool"] == "Bash" and asked["input"] == {"command": "rm -rf build"}
    assert asked["rationale"] == "rm is not in the allow rules"
    assert terminal.call("session.get", session_id=session_id)["state"] == "waiting_permission"
    with pytest.raises(NotOriginator):
        browser.permissions.approve(asked["request_id"])
    terminal.permissions.approve(asked["request_id"])
    done = watcher.wait("turn_done", turn_id=turn_id)["data"]
    assert done["status"] == "completed"
    assert watcher.find("tool_end", turn_id=turn_id)[0]["data"]["output"] == "ran rm -rf build"
    response = next(entry["stdin"]["response"] for entry in calls(tmp_path)
                    if entry.get("stdin", {}).get("type") == "control_response")
    assert response["subtype"] == "success"
    assert response["response"] == {"behavior": "allow", "updatedInput": {"command": "rm -rf build"}}
    watcher.close()


def test_a_denial_reaches_claude_with_the_frontends_reason(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="ask: git push --force")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    client.permissions.deny(asked["request_id"], reason="not on main")
    watcher.wait("turn_done", turn_id=turn_id)
    end = watcher.find("tool_end", turn_id=turn_id)[0]["data"]
    assert end["ok"] is False and end["output"] == "Denied through cc_daemon: not on main"
    watcher.close()


def test_a_timeout_denies_with_a_message_that_says_so():
    assert deny_message("timeout") == "Nobody answered this permission request in time, so it was denied."


def test_cancel_interrupts_through_the_control_protocol(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="hang")["turn_id"]
    watcher.wait("text_chunk", turn_id=turn_id)
    client.call("session.cancel", session_id=session_id)
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "cancelled"
    interrupts = [entry for entry in calls(tmp_path)
                  if entry.get("stdin", {}).get("request", {}).get("subtype") == "interrupt"]
    assert len(interrupts) == 1
    after = client.call("session.send", session_id=session_id, text="hello")["turn_id"]
    assert watcher.wait("turn_done", turn_id=after)["data"]["status"] == "completed"
    assert len([entry for entry in calls(tmp_path) if "argv" in entry]) == 1  # interrupted, not restarted
    watcher.close()


def test_a_claude_that_ignores_the_interrupt_is_stopped_and_resumed_next_turn(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, client, FAKE_CLAUDE_IGNORE_INTERRUPT="1")
    turn_id = client.call("session.send", session_id=session_id, text="hang")["turn_id"]
    watcher.wait("text_chunk", turn_id=turn_id)
    client.call("session.cancel", session_id=session_id)
    assert watcher.wait("turn_done", turn_id=turn_id, timeout=15)["data"]["status"] == "cancelled"
    assert any("did not end the turn" in event["data"]["message"] for event in watcher.find("runtime_log"))
    after = client.call("session.send", session_id=session_id, text="hello")["turn_id"]
    assert watcher.wait("turn_done", turn_id=after)["data"]["status"] == "completed"
    first_argv, second_argv = (entry["argv"] for entry in calls(tmp_path) if "argv" in entry)
    assert "--resume" not in first_argv and second_argv[second_argv.index("--resume") + 1]
    watcher.close()


def test_a_claude_that_dies_mid_request_fails_the_turn_and_cancels_the_question(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, client)
    warm_up = client.call("session.send", session_id=session_id, text="hello")["turn_id"]
    watcher.wait("turn_done", turn_id=warm_up)
    turn_id = client.call("session.send", session_id=session_id, text="die")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "failed"
    assert any("claude exited with code 3" in event["data"]["message"] for event in watcher.find("runtime_error"))
    assert watcher.wait("permission_cancelled", request_id=asked["request_id"])
    # The next turn starts claude again, resuming the conversation it was in.
    after = client.call("session.send", session_id=session_id, text="hello again")["turn_id"]
    assert watcher.wait("turn_done", turn_id=after)["data"]["status"] == "completed"
    first_argv, second_argv = (entry["argv"] for entry in calls(tmp_path) if "argv" in entry)
    resumed = second_argv[second_argv.index("--resume") + 1]
    assert any(f"claude session {resumed}," in event["data"]["message"] for event in watcher.find("runtime_log"))
    assert client.call("session.get", session_id=session_id)["state"] == "idle"
    watcher.close()


def test_a_withdrawn_question_is_cancelled_and_never_answered(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="withdraw")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    cancelled = watcher.wait("permission_cancelled", request_id=asked["request_id"])["data"]
    assert cancelled["reason"] == "claude withdrew the question"
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "completed"
    assert not [entry for entry in calls(tmp_path) if entry.get("stdin", {}).get("type") == "control_response"]
    watcher.close()


def test_lines_that_are_not_json_are_reported_and_the_turn_goes_on(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = claude_session(tcp_daemon, tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="garbage")["turn_id"]
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "completed"
    warnings = [event["data"]["message"] for event in watcher.find("runtime_log")]
    assert any("not JSON: this is not json" in message for message in warnings)
    assert any("not JSON: [1, 2, 3]" in message for message in warnings)
    watcher.close()
