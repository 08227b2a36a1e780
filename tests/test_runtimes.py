"""The runtime protocol, the runtime registry and the built-in runtimes other than the
demo: ``command`` with real programs, ``claude`` against a fake CLI, third-party runtimes
from a real entry point, and what a misbehaving runtime's garbage turns into."""

from __future__ import annotations

import json
import signal
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cc_daemon.client import RpcCallError
from cc_daemon.runtimes import protocol
from cc_daemon.runtimes.protocol import FROM_RUNTIME, LineSplitter, Oversized, ProtocolError, decode, encode
from cc_daemon.errors import RUNTIME_UNAVAILABLE

from helpers.daemons import wait_for
from helpers.frontend import ENTRYPOINT_DIR, FAKES, Watcher, client_of, command_output, path_with_fake_claude

VALID_FROM_RUNTIME = [
    {"type": "ready", "protocol": 1, "runtime": "x", "version": "1"},
    {"type": "text", "turn_id": "t", "text": "hi"},
    {"type": "permission_withdrawn", "turn_id": "t", "request_id": "r", "reason": "gave up"},
    {"type": "tool_start", "turn_id": "t", "tool_use_id": "u", "tool": "Bash", "input": {"command": "ls"}},
    {"type": "tool_end", "turn_id": "t", "tool_use_id": "u", "ok": True, "output": "a\n"},
    {"type": "permission_request", "turn_id": "t", "request_id": "r", "tool": "Write", "input": {}, "rationale": None},
    {"type": "turn_done", "turn_id": "t", "status": "completed",
     "usage": {"input_tokens": 1, "output_tokens": 2, "cost_usd": 0.5, "service_tier": "standard"}},
    {"type": "error", "message": "bad"},
    {"type": "log", "level": "info", "message": "hello", "extra": "ignored"},
]


# -- protocol -------------------------------------------------------------------------------
def test_every_runtime_message_type_has_a_schema_and_valid_examples_decode():
    assert {message["type"] for message in VALID_FROM_RUNTIME} == set(FROM_RUNTIME)
    for message in VALID_FROM_RUNTIME:
        assert decode(json.dumps(message).encode()) == message


@pytest.mark.parametrize("line, reason", [
    (b"not json", "not_json"), (b"\xff\xfe", "not_utf8"), (b"[1]", "not_an_object"), (b"NaN", "not_json"),
    (b'{"type": "bogus"}', "unknown_type"), (b'{"text": "no type"}', "unknown_type"),
    (b'{"type": "text", "turn_id": "t"}', "invalid_message"),
    (b'{"type": "turn_done", "turn_id": "t", "status": "great"}', "invalid_message"),
    (b'{"type": "turn_done", "turn_id": "t", "status": "completed", "usage": {"input_tokens": -1}}', "invalid_message"),
    (b"[" * 100000, "not_json"),
])
def test_malformed_lines_are_protocol_errors(line, reason):
    with pytest.raises(ProtocolError) as caught:
        decode(line)
    assert caught.value.reason == reason


@given(st.binary(max_size=300))
def test_decode_never_fails_any_other_way(line):
    try:
        assert decode(line)["type"] in FROM_RUNTIME
    except ProtocolError:
        pass


def test_the_daemon_only_sends_valid_messages():
    assert json.loads(encode({"type": "stop", "reason": "bye"})) == {"type": "stop", "reason": "bye"}
    for bad in ({"type": "stop"}, {"type": "ready", "protocol": 1}, {"type": "turn", "turn_id": "t", "text": 3}):
        with pytest.raises(ValueError):
            encode(bad)


@given(lines=st.lists(st.one_of(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
                                st.integers(41, 200).map(lambda n: b"y" * n)), max_size=20),
       cuts=st.lists(st.integers(0, 5000), max_size=10), trailing_newline=st.booleans())
def test_line_splitter_matches_a_plain_split_however_the_stream_is_cut(lines, cuts, trailing_newline):
    limit = 40
    stream = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    splitter = LineSplitter(limit)
    out: list[bytes | Oversized] = []
    positions = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    for start, stop in zip(positions, positions[1:]):
        out.extend(splitter.feed(stream[start:stop]))
    out.extend(splitter.finish())
    expected = [line if len(line) <= limit else Oversized(len(line)) for line in lines]
    if lines and not trailing_newline and lines[-1] == b"":
        expected.pop()  # an empty last line without its newline is simply nothing
    assert out == expected


def test_every_message_schema_is_a_valid_json_schema():
    # protocol.py checks them only when it first builds its validators, not at import.
    from jsonschema import Draft202012Validator

    for schema in (*protocol.TO_RUNTIME.values(), *FROM_RUNTIME.values()):
        Draft202012Validator.check_schema(schema)


def test_the_line_limit_is_generous_but_bounded():
    assert protocol.MAX_LINE_BYTES == 1 << 20 and protocol.MAX_CHUNK_CHARS < protocol.MAX_LINE_BYTES // 4


# -- command runtime ------------------------------------------------------------------------
def test_command_runtime_feeds_stdin_and_streams_stdout(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id = client.call("session.create", runtime="command", cwd=str(tmp_path), args=["cat"])["session_id"]
    watcher = Watcher(client, session_id, since=0)
    first = client.call("session.send", session_id=session_id, text="line one\nline two")["turn_id"]
    assert watcher.wait("turn_done", turn_id=first)["data"]["status"] == "completed"
    assert [e["data"]["text"] for e in watcher.find("text_chunk", turn_id=first)] == ["line one\n", "line two\n"]
    second = client.call("session.send", session_id=session_id, text="again")["turn_id"]
    watcher.wait("turn_done", turn_id=second)
    assert watcher.text_of(second) == "again\n"
    watcher.close()


def test_a_runtime_and_what_it_starts_hear_sigterm(tcp_daemon, tmp_path):
    """The session is created by an RPC, on a thread that blocks SIGTERM and SIGINT; a
    child inherits that mask across exec, so the spawn unblocks them (issue 17)."""
    client = client_of(tcp_daemon, "repl")
    blocked = int(command_output(client, tmp_path, ["grep", "SigBlk", "/proc/self/status"]).split()[1], 16)
    for sig in (signal.SIGTERM, signal.SIGINT):
        assert not blocked & (1 << (sig - 1)), f"{sig.name} is blocked in the runtime's child: {blocked:#x}"


def test_command_runtime_passes_text_as_an_argument_and_reports_failures(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    script = "import os, sys; print(sys.argv[1].upper(), os.getcwd()); sys.exit(3 if 'fail' in sys.argv[1] else 0)"
    session_id = client.call("session.create", runtime="command", cwd=str(tmp_path),
                             args=[sys.executable, "-c", script, "{text}"])["session_id"]
    watcher = Watcher(client, session_id, since=0)
    ok = client.call("session.send", session_id=session_id, text="shout -n 'this'")["turn_id"]
    assert watcher.wait("turn_done", turn_id=ok)["data"]["status"] == "completed"
    assert watcher.text_of(ok) == f"SHOUT -N 'THIS' {tmp_path}\n"
    failed = client.call("session.send", session_id=session_id, text="fail")["turn_id"]
    assert watcher.wait("turn_done", turn_id=failed)["data"]["status"] == "failed"
    assert "exited with code 3" in watcher.find("runtime_error", turn_id=failed)[0]["data"]["message"]
    watcher.close()


def test_command_runtime_refuses_missing_programs_at_create(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    for args, words in (([], "needs the program"), (["no-such-program-xyz"], "not found on PATH"),
                        (["./missing.sh"], "not an executable file")):
        with pytest.raises(RpcCallError) as caught:
            client.call("session.create", runtime="command", cwd=str(tmp_path), args=args)
        assert caught.value.code == RUNTIME_UNAVAILABLE and words in caught.value.message


def test_runtimes_get_a_scrubbed_environment_plus_the_sessions_env(tcp_daemon, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("LISTEN_FDS", "1")
    client = client_of(tcp_daemon, "repl")
    output = command_output(client, tmp_path, ["sh", "-c", 'echo "${NOTIFY_SOCKET:-unset} ${LISTEN_FDS:-unset} $CUSTOM"'],
                            env={"CUSTOM": "yes"})
    assert output == "unset unset yes\n"


# -- claude runtime -------------------------------------------------------------------------
def test_claude_missing_from_path_is_said_clearly(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    with pytest.raises(RpcCallError) as caught:
        client.call("session.create", runtime="claude", cwd=str(tmp_path), env={"PATH": str(tmp_path)})
    assert caught.value.code == RUNTIME_UNAVAILABLE
    assert "`claude` is not on the PATH" in caught.value.message and caught.value.data == {"runtime": "claude"}


def test_session_runtimes_reports_claude_version_and_path(make_daemon, monkeypatch):
    monkeypatch.setenv("PATH", path_with_fake_claude())
    running = make_daemon()
    runtimes = {r["name"]: r for r in client_of(running, "cli").call("session.runtimes")["runtimes"]}
    assert runtimes["claude"]["available"] is True
    assert runtimes["claude"]["version"] == "2.1.332 (Claude Code)"
    assert runtimes["claude"]["path"] == str(FAKES / "claude")
    assert runtimes["demo"]["source"] == "builtin"


# -- third-party runtimes (entry points) -----------------------------------------------------
@pytest.fixture
def third_party(make_daemon, monkeypatch):
    """A daemon that sees the ``ccd-fake-runtimes`` distribution (a real dist-info on sys.path)."""
    monkeypatch.syspath_prepend(str(ENTRYPOINT_DIR))
    return make_daemon()


def test_entry_point_runtimes_are_listed_and_cannot_take_builtin_names(third_party):
    runtimes = {r["name"]: r for r in client_of(third_party, "cli").call("session.runtimes")["runtimes"]}
    assert runtimes["noisy"]["source"] == "entry point from ccd-fake-runtimes"
    assert runtimes["demo"]["source"] == "builtin"
    assert "broken" not in runtimes  # its class does not exist: skipped, logged, the daemon still starts


def test_garbage_from_a_runtime_becomes_protocol_error_events_and_nothing_breaks(third_party, tmp_path):
    client = client_of(third_party, "repl")
    session_id = client.call("session.create", runtime="noisy", cwd=str(tmp_path))["session_id"]
    watcher = Watcher(client, session_id, since=0)
    watcher.wait("session_state", state="idle")  # the garbage comes before "ready": all of it is in
    reasons = [event["data"]["reason"] for event in watcher.find("runtime_protocol_error")]
    assert reasons == ["not_json", "unknown_type", "invalid_message", "not_an_object", "not_utf8", "oversized",
                       "unknown_turn"]
    oversized = watcher.find("runtime_protocol_error", reason="oversized")[0]["data"]
    assert "2097152 bytes" in oversized["detail"] and "line_prefix" not in oversized
    turn_id = client.call("session.send", session_id=session_id, text="are you ok?")["turn_id"]
    watcher.wait("turn_done", turn_id=turn_id)
    assert watcher.text_of(turn_id) == "still here"
    assert client.call("system.ping") == "pong"
    watcher.close()


def test_the_demo_asks_to_write_exactly_what_it_writes(unix_daemon, tmp_path):
    """Issue 13 item 10: it once asked for "0 characters" and wrote a byte."""
    with unix_daemon.client() as client:
        session = client.sessions.create("demo", tmp_path)["session_id"]
        wait_for(lambda: client.sessions.get(session)["state"] == "idle", message="demo ready")
        asked = None
        for event in client.sessions.turn(session, "write empty.txt"):
            if event["type"] == "permission_request":
                asked = event["data"]
                client.permissions.approve(asked["request_id"])
    written = (tmp_path / "empty.txt").read_bytes()
    assert asked["input"]["content"].encode() == written == b"\n"
    assert asked["rationale"] == "The demo wants to write 1 byte to empty.txt"
