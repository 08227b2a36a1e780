"""The ``codex`` runtime against a fake ``codex app-server`` (issue 17, issue 15 item 7).

One app-server per session, JSON-RPC over stdio: Codex's command and patch approvals
become daemon permission requests owned by the turn's originator, its streamed message,
tool items, token usage and turn boundaries become session events, and the thread id is
the resume token. All over the wire, with ``fakes/codex`` playing the CLI.
"""

from __future__ import annotations

import json

import pytest

from cc_daemon.client import NotOriginator
from helpers.frontend import Watcher, client_of, path_with_fake_claude as path_with_fakes


def codex_session(tmp_path, client) -> tuple[str, Watcher]:
    session_id = client.call("session.create", runtime="codex", cwd=str(tmp_path),
                             env={"PATH": path_with_fakes(), "FAKE_CODEX_LOG": str(tmp_path / "codex.jsonl")}
                             )["session_id"]
    return session_id, Watcher(client, session_id, since=0)


def sent(tmp_path) -> list[dict]:
    return [json.loads(line)["stdin"] for line in (tmp_path / "codex.jsonl").read_text().splitlines()
            if "stdin" in json.loads(line)]


def test_turns_stream_with_usage_on_one_thread(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = codex_session(tmp_path, client)
    first = client.call("session.send", session_id=session_id, text="hello there")["turn_id"]
    done = watcher.wait("turn_done", turn_id=first)["data"]
    assert done["status"] == "completed"
    assert done["usage"] == {"input_tokens": 30, "output_tokens": 8, "cache_read_input_tokens": 4}
    assert watcher.text_of(first) == "Hello from codex: hello there "
    second = client.call("session.send", session_id=session_id, text="again")["turn_id"]
    assert watcher.wait("turn_done", turn_id=second)["data"]["status"] == "completed"
    methods = [message.get("method") for message in sent(tmp_path) if message.get("method")]
    assert methods == ["initialize", "initialized", "thread/start", "turn/start", "turn/start"]
    watcher.close()


def test_the_originator_approves_a_command_while_another_client_is_refused(tcp_daemon, tmp_path):
    terminal, phone = client_of(tcp_daemon, "repl"), client_of(tcp_daemon, "bridge")
    session_id, watcher = codex_session(tmp_path, terminal)
    turn_id = terminal.call("session.send", session_id=session_id, text="run: rm -rf build")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    assert asked["tool"] == "shell" and asked["input"] == {"command": "rm -rf build", "cwd": str(tmp_path)}
    assert asked["rationale"] == "it writes outside the workspace"
    with pytest.raises(NotOriginator):
        phone.permissions.approve(asked["request_id"])
    terminal.permissions.approve(asked["request_id"])
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "completed"
    end = watcher.find("tool_end", turn_id=turn_id)[0]["data"]
    assert end["ok"] is True and end["output"] == "ran rm -rf build"
    assert {"jsonrpc": "2.0", "id": 101, "result": {"decision": "accept"}} in sent(tmp_path)
    watcher.close()


def test_a_declined_patch_is_reported_declined(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = codex_session(tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="patch")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    assert asked["tool"] == "apply_patch" and asked["input"]["changes"][0]["path"] == "notes.txt"
    client.permissions.deny(asked["request_id"], reason="not now")
    watcher.wait("turn_done", turn_id=turn_id)
    assert watcher.find("tool_end", turn_id=turn_id)[0]["data"]["ok"] is False
    assert {"jsonrpc": "2.0", "id": 101, "result": {"decision": "decline"}} in sent(tmp_path)
    watcher.close()


def test_cancel_interrupts_the_codex_turn(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = codex_session(tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="hang")["turn_id"]
    watcher.wait("text_chunk", turn_id=turn_id)
    client.call("session.cancel", session_id=session_id)
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "cancelled"
    interrupt = next(message for message in sent(tmp_path) if message.get("method") == "turn/interrupt")
    assert interrupt["params"]["turnId"] == "turn-1"
    watcher.close()


def test_a_codex_that_dies_mid_request_is_restarted_on_its_thread(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = codex_session(tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="die")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "failed"
    assert watcher.wait("permission_cancelled", request_id=asked["request_id"])
    assert any("codex exited with code 3" in event["data"]["message"] for event in watcher.find("runtime_error"))
    after = client.call("session.send", session_id=session_id, text="still there?")["turn_id"]
    assert watcher.wait("turn_done", turn_id=after)["data"]["status"] == "completed"
    started = next(message for message in sent(tmp_path) if message.get("method") == "thread/start")
    resumed = next(message for message in sent(tmp_path) if message.get("method") == "thread/resume")
    assert resumed["params"]["threadId"]
    assert started["params"] == {"cwd": str(tmp_path)}
    watcher.close()


def test_withdrawn_requests_and_failed_turns_are_reported(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id, watcher = codex_session(tmp_path, client)
    turn_id = client.call("session.send", session_id=session_id, text="withdraw")["turn_id"]
    asked = watcher.wait("permission_request", turn_id=turn_id)["data"]
    assert watcher.wait("permission_cancelled", request_id=asked["request_id"])["data"]["reason"] == \
        "codex resolved the request itself"
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "completed"
    failed = client.call("session.send", session_id=session_id, text="fail")["turn_id"]
    assert watcher.wait("turn_done", turn_id=failed)["data"]["status"] == "failed"
    errors = [event["data"]["message"] for event in watcher.find("runtime_error", turn_id=failed)]
    assert "codex: stream disconnected" in errors
    watcher.close()
