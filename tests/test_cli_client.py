"""The client verbs as a user runs them, as subprocesses against real daemons: ``rpc``,
``events`` and ``session new|send|ls|show|logs|cancel|close|attach`` (``attach`` through a
pseudo-terminal with pexpect, answering a permission prompt)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from helpers.daemons import cli, short_tmpdir, wait_for

from cc_daemon.commands import build_parser

ESC = "\x1b"


def at(daemon) -> list[str]:
    """Flags that find ``daemon`` through its discovery file."""
    return ["--data-dir", str(daemon.data_dir)]


def ok(*args: str) -> subprocess.CompletedProcess:
    result = cli(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert ESC not in result.stdout + result.stderr  # not a terminal: no colour, no control codes
    return result


def new_session(daemon, cwd: Path, *extra: str) -> str:
    session_id = ok("session", "new", "demo", "--cwd", str(cwd), *extra, *at(daemon)).stdout.strip()
    assert re.fullmatch(r"ses_[0-9a-f]{16}", session_id)
    return session_id


# -- help -------------------------------------------------------------------------------
def subcommands(parser):
    for action in parser._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {child}", grandchild) for child, grandchild in subcommands(sub))


@pytest.mark.parametrize("verb", ["rpc", "events", "session new", "session send", "session ls", "session show",
                                  "session attach", "session cancel", "session close", "session logs"])
def test_every_client_verb_documents_an_example_and_its_exit_codes(verb):
    helps = dict(subcommands(build_parser()))
    text = " ".join(helps[verb].format_help().split())
    assert f"cheetahclaws {verb}" in text.split("example", 1)[1], text
    assert "exit codes:" in text and "3 no daemon answers" in text and "2 bad usage" in text


def test_session_help_as_a_subprocess_lists_every_action():
    result = ok("session", "--help")
    for action in ("new", "send", "ls", "show", "attach", "cancel", "close", "logs"):
        assert re.search(rf"^\s+{action}\s", result.stdout, re.M), action
    assert "cheetahclaws session attach $S" in result.stdout


# -- rpc --------------------------------------------------------------------------------
def test_rpc_pretty_raw_and_key_value_params_over_tcp(tcp_daemon, tmp_path):
    token_path = tmp_path / "token"
    token_path.write_text(tcp_daemon.token)
    over_tcp = ["--address", tcp_daemon.address, "--token-path", str(token_path)]
    assert ok("rpc", "system.ping", *over_tcp).stdout == "pong\n"

    pretty = ok("rpc", "session.runtimes", *over_tcp).stdout
    assert pretty.startswith("{\n  \"runtimes\": [") and json.loads(pretty)["runtimes"][0]["name"]

    raw = json.loads(ok("rpc", "system.ping", "--raw", *over_tcp).stdout)
    assert raw == {"jsonrpc": "2.0", "id": 1, "result": "pong"}

    created = json.loads(ok("rpc", "permission.demo", "tool=Bash", 'input={"command": "ls"}', "timeout_s=60",
                            *over_tcp).stdout)
    fetched = json.loads(ok("rpc", "permission.get", f"request_id={created['request_id']}", *over_tcp).stdout)
    assert fetched["tool"] == "Bash" and fetched["input"] == {"command": "ls"} and fetched["state"] == "pending"
    as_object = json.loads(ok("rpc", "permission.get", json.dumps({"request_id": created["request_id"]}),
                              *over_tcp).stdout)
    assert as_object["request_id"] == created["request_id"]


def test_rpc_errors_print_code_message_data_and_exit_non_zero(unix_daemon):
    unknown = cli("rpc", "no.such.method", *at(unix_daemon))
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("error -32601: ")

    invalid = cli("rpc", "permission.demo", "timeout_s=-5", *at(unix_daemon))
    assert invalid.returncode == 1 and "error -32602: " in invalid.stderr
    data = json.loads(invalid.stderr.split("data: ", 1)[1])
    assert data["field"] == "timeout_s"

    raw = cli("rpc", "no.such.method", "--raw", *at(unix_daemon))
    assert raw.returncode == 1 and json.loads(raw.stdout)["error"]["code"] == -32601

    usage = cli("rpc", "system.ping", "not-a-pair", *at(unix_daemon))
    assert usage.returncode == 2 and "key=value" in usage.stderr and "Traceback" not in usage.stderr
    assert cli("rpc", "system.ping", "--client-kind", "../x", *at(unix_daemon)).returncode == 2

    nobody = cli("rpc", "system.ping", "--data-dir", str(short_tmpdir()))
    assert nobody.returncode == 3 and "running" in nobody.stderr and "Traceback" not in nobody.stderr


# -- events -----------------------------------------------------------------------------
def test_events_since_type_json_and_session_filters(unix_daemon, tmp_path):
    first = new_session(unix_daemon, tmp_path)
    second = new_session(unix_daemon, tmp_path)
    with unix_daemon.client() as client:
        wait_for(lambda: client.sessions.get(second)["state"] == "idle", message="second session ready")

    lines = ok("events", "--since", "0", "--type", "session_created", "--limit", "2", *at(unix_daemon)).stdout
    rows = lines.splitlines()
    assert len(rows) == 2 and all("session_created" in row for row in rows)
    assert first in rows[0] and second in rows[1] and "(me)" in rows[0]

    as_json = [json.loads(line) for line in ok("events", "--since", "0", "--json", "--session", second,
                                               "--type", "session_created,session_state", "--limit", "2",
                                               *at(unix_daemon)).stdout.splitlines()]
    assert [event["type"] for event in as_json] == ["session_created", "session_state"]
    assert {event["session_id"] for event in as_json} == {second}
    assert as_json[0]["id"] < as_json[1]["id"]

    after = as_json[0]["id"]
    resumed = ok("events", "--since", str(after), "--json", "--limit", "1", "--session", second, *at(unix_daemon))
    assert json.loads(resumed.stdout)["id"] > after


def test_events_follows_events_published_while_it_runs(unix_daemon):
    with unix_daemon.client() as client:
        since = client.last_event_id()
        client.permissions.demo("Bash", {"command": "before"})
        follower = subprocess.Popen([sys.executable, "-m", "cc_daemon", "events", "--since", str(since),
                                     "--type", "permission_request", "--limit", "2", *at(unix_daemon)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert "before" in follower.stdout.readline()  # the stream is open: what follows is live
            client.permissions.demo("Bash", {"command": "while-following"})
            assert "while-following" in follower.stdout.readline()
            assert follower.wait(10) == 0
        finally:
            follower.kill()
            follower.communicate()


# -- session verbs --------------------------------------------------------------------------
def test_session_new_send_ls_show_logs_cancel_close(unix_daemon, tmp_path):
    session = new_session(unix_daemon, tmp_path, "--name", "cli-test")

    said = ok("session", "send", session, "hello", "from", "the", "cli", "--wait", *at(unix_daemon)).stdout
    assert "You said: hello from the cli" in said and "completed" in said

    table = ok("session", "ls", *at(unix_daemon)).stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "RUNTIME", "CWD", "AGE", "TOKENS", "COST", "LAST", "ACTIVITY"]
    row = next(line for line in table if line.startswith(session))
    assert row.split()[1:5] == ["cli-test", "idle", "demo", str(tmp_path)] and row.endswith("s ago")
    # The demo counts a word as a token: 4 in ("hello from the cli"), 6 out ("You said: ...").
    assert row.split()[6:8] == ["10", "$0.0000"]
    listed = json.loads(ok("session", "ls", "--json", *at(unix_daemon)).stdout)
    assert listed[0]["session_id"] == session and listed[0]["last_activity_at"] >= listed[0]["created_at"]

    shown = ok("session", "show", session, *at(unix_daemon)).stdout
    assert re.search(r"^state\s+idle$", shown, re.M) and re.search(r"^turns\s+1 accepted", shown, re.M)
    assert "demo runtime: pid" in shown  # the tail of the runtime's stderr

    turn = ok("session", "send", session, "sleep", "30", *at(unix_daemon)).stdout.strip()
    assert turn.startswith("turn_")
    with unix_daemon.client() as client:
        wait_for(lambda: (client.sessions.get(session)["current_turn"] or {}).get("turn_id") == turn,
                 message="the sleep turn running")
    assert ok("session", "cancel", session, *at(unix_daemon)).stdout.strip() == f"cancelled {turn}"
    with unix_daemon.client() as client:
        wait_for(lambda: client.sessions.get(session)["state"] == "idle", message="idle after cancel")
    assert ok("session", "cancel", session, *at(unix_daemon)).stdout.strip() == "no turn to cancel"

    failed = cli("session", "send", session, "fail", "on", "purpose", "--wait", *at(unix_daemon))
    assert failed.returncode == 1 and "error: on purpose" in failed.stdout and "failed" in failed.stdout

    logs = ok("session", "logs", session, *at(unix_daemon)).stdout.splitlines()
    kinds = [line.split()[2] for line in logs]
    assert kinds[0] == "session_created" and kinds.count("turn_done") == 3
    assert any("cancelled" in line for line in logs if " turn_done " in line)
    later = ok("session", "logs", session, "--since", logs[-2].split()[0], "--json", *at(unix_daemon)).stdout
    assert [json.loads(line)["id"] for line in later.splitlines()] == [int(logs[-1].split()[0])]

    assert ok("session", "close", session, *at(unix_daemon)).stdout.strip() == f"closed {session} (stopped)"
    assert " stopped " in next(line for line in ok("session", "ls", *at(unix_daemon)).stdout.splitlines()
                               if line.startswith(session))


def test_session_delegate_hands_the_cli_s_requests_to_another_client_and_takes_them_back(unix_daemon, tmp_path):
    session = new_session(unix_daemon, tmp_path)  # the CLI (kind cli) owns it
    web_ref = json.loads(ok("rpc", "system.whoami", "--client-kind", "web", *at(unix_daemon)).stdout)["client_ref"]
    assert ok("rpc", "system.whoami", "--client-kind", "web", *at(unix_daemon)).stdout.count(web_ref) == 1  # known now
    assert ok("session", "delegate", session, web_ref, *at(unix_daemon)).stdout.strip() == f"delegated to web/{web_ref}"
    shown = json.loads(ok("rpc", "session.get", f"session_id={session}", *at(unix_daemon)).stdout)
    assert shown["delegations"][0]["delegate"] == {"client_ref": web_ref, "kind": "web"}
    assert ok("session", "delegate", session, "--take-back", *at(unix_daemon)).stdout.strip() == "taken back"
    again = cli("session", "delegate", session, "--take-back", *at(unix_daemon))
    assert again.returncode == 1 and "-32020" in again.stderr and "not_delegated" in again.stderr
    both = cli("session", "delegate", session, web_ref, "--take-back", *at(unix_daemon))
    assert both.returncode == 2 and "CLIENT_REF, or give --take-back" in both.stderr


def test_session_verbs_report_refusals(unix_daemon, tmp_path):
    no_runtime = cli("session", "new", "no-such-runtime", "--cwd", str(tmp_path), *at(unix_daemon))
    assert no_runtime.returncode == 1 and no_runtime.stderr.startswith("error ")
    approve = cli("session", "new", "demo", "--approve-via", "allow", *at(unix_daemon))
    assert approve.returncode == 1 and "unattended" in approve.stderr
    unknown = cli("session", "send", "ses_0000000000000000", "hi", *at(unix_daemon))
    assert unknown.returncode == 1 and "Unknown session" in unknown.stderr
    assert cli("session", "new", "demo", "--env", "no-equals-sign", *at(unix_daemon)).returncode == 2
    assert cli("session", "attach", "../../etc", *at(unix_daemon)).returncode == 2
    assert cli("session", "ls", "--data-dir", str(short_tmpdir())).returncode == 3


def test_attach_to_an_ended_session_replays_it_without_control_codes(unix_daemon, tmp_path):
    session = new_session(unix_daemon, tmp_path)
    ok("session", "send", session, "echo", "me", "--wait", *at(unix_daemon))
    ok("session", "close", session, *at(unix_daemon))
    replay = ok("session", "attach", session, *at(unix_daemon)).stdout
    assert "> echo me" in replay and "You said: echo me" in replay and "[session closed:" in replay
    again = ok("session", "attach", session, *at(unix_daemon)).stdout  # nothing new since the last attach
    assert "You said" not in again and "the session is stopped" in again


# -- attach in a terminal -------------------------------------------------------------------
def attach(daemon, session: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "cc_daemon", "session", "attach", session, *at(daemon)],
                          encoding="utf-8", timeout=15, dimensions=(40, 200))
    child.expect_exact(f"attached to {session}")
    return child


def detach(child: pexpect.spawn) -> str:
    child.sendintr()
    child.expect_exact("detached from")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return child.before


def test_attach_answers_its_prompt_shows_others_read_only_and_resumes(unix_daemon, tmp_path):
    session = new_session(unix_daemon, tmp_path)
    other = ["--client-kind", "other", *at(unix_daemon)]
    child = attach(unix_daemon, session)
    try:
        child.expect_exact("Ctrl-C detaches")  # the session's history so far is shown above it
        assert ESC in child.before  # a terminal gets colour

        child.sendline("write hello.txt hi from attach")
        child.expect_exact("allow? [y/n]")
        child.sendline("y")
        child.expect_exact("approved")
        child.expect_exact("Wrote hello.txt.")
        assert (tmp_path / "hello.txt").read_text() == "hi from attach\n"
        child.expect_exact("completed")

        # Another client's request is shown, but not offered: only its originator may answer.
        ok("session", "send", session, "run echo from-other", *other)
        child.expect(r"\? Bash \{\"command\":\"echo from-other\"\} -- asked of \[other/[0-9a-f]+\], "
                     r"shown read-only")
        pending = json.loads(ok("rpc", "permission.list", *other).stdout)["pending"]
        request_id = pending[0]["request_id"]
        refused = cli("rpc", "permission.answer", f"request_id={request_id}", 'result={"approve": true}',
                      *at(unix_daemon))
        assert refused.returncode == 1 and "error -32001" in refused.stderr
        ok("rpc", "permission.answer", f"request_id={request_id}", 'result={"approve": false}', *other)
        child.expect_exact(f"{request_id}: denied")
        child.expect_exact("permission denied")
        child.expect_exact("completed")
        detach(child)
    finally:
        child.close(force=True)

    with unix_daemon.client() as client:
        assert client.sessions.get(session)["state"] == "idle"  # detaching left it running
    ok("session", "send", session, "said while detached", "--wait", *other)

    child = attach(unix_daemon, session)
    try:
        child.expect_exact("You said: said while detached")
        assert "hello.txt" not in child.before  # resumed after the last event shown, no replay
        child.expect_exact("Ctrl-C detaches")
        child.sendline("run echo resumed-$((40+2))")
        child.expect_exact("allow? [y/n]")
        detach(child)  # leave the prompt unanswered: the request stays pending
    finally:
        child.close(force=True)

    child = attach(unix_daemon, session)
    try:
        child.expect_exact("allow? [y/n]")  # asked again, since it is still ours and open
        child.sendline("maybe")
        child.expect_exact("answer y or n")
        child.sendline("y")
        child.expect_exact("resumed-42")
        child.expect_exact("completed")
        detach(child)
    finally:
        child.close(force=True)


def test_send_wait_leaves_its_prompt_to_attach_which_answers_it(unix_daemon, tmp_path):
    session = new_session(unix_daemon, tmp_path)
    sender = subprocess.Popen([sys.executable, "-m", "cc_daemon", "session", "send", session, "write", "late.txt",
                               "ok", "--wait", "--on-permission", "wait", *at(unix_daemon)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with unix_daemon.client() as client:
            wait_for(lambda: client.sessions.get(session)["pending_permissions"], message="the write request")
        child = attach(unix_daemon, session)  # the same client kind: the request is ours to answer
        try:
            child.expect_exact("allow? [y/n]")
            child.sendline("y")
            child.expect_exact("Wrote late.txt.")
            detach(child)
        finally:
            child.close(force=True)
        out, err = sender.communicate(timeout=15)
    finally:
        sender.kill()
    assert sender.returncode == 0 and "Wrote late.txt." in out and "completed" in out
    assert f"cheetahclaws session attach {session}" in err
    assert (tmp_path / "late.txt").read_text() == "ok\n"


def test_send_wait_without_a_terminal_never_waits_silently_for_a_permission(unix_daemon, tmp_path):
    """A script gets exit code 5 and the request id at once; the request stays pending for
    an answer from elsewhere (the same client kind may answer it)."""
    session = new_session(unix_daemon, tmp_path)
    asked = cli("session", "send", session, "write", "foo.txt", "hi", "--wait", *at(unix_daemon))
    assert asked.returncode == 5, (asked.stdout, asked.stderr)
    request_id = asked.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"pr_[0-9a-f]+", request_id) and f"cheetahclaws session attach {session}" in asked.stderr
    ok("rpc", "permission.answer", f"request_id={request_id}", 'result={"approve": true}', *at(unix_daemon))
    with unix_daemon.client() as client:
        wait_for(lambda: client.sessions.get(session)["state"] == "idle", message="the turn's end")
    assert (tmp_path / "foo.txt").read_text() == "hi\n"


@pytest.mark.parametrize("answer", ["allow", "deny"])
def test_send_wait_answers_from_the_same_command_when_told_how(unix_daemon, tmp_path, answer):
    session = new_session(unix_daemon, tmp_path)
    said = ok("session", "send", session, "write", "foo.txt", "hi", "--wait", "--on-permission", answer,
              *at(unix_daemon)).stdout
    assert ("approved" if answer == "allow" else "denied") in said and "completed" in said
    assert (tmp_path / "foo.txt").exists() == (answer == "allow")


def test_send_wait_at_a_terminal_asks_inline(unix_daemon, tmp_path):
    session = new_session(unix_daemon, tmp_path)
    child = pexpect.spawn(sys.executable, ["-m", "cc_daemon", "session", "send", session, "write", "foo.txt", "hi",
                                           "--wait", *at(unix_daemon)], encoding="utf-8", timeout=15)
    try:
        child.expect_exact("allow? [y/n]")
        child.sendline("perhaps")
        child.expect_exact("answer y or n")
        child.sendline("y")
        child.expect_exact("Wrote foo.txt.")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)
    assert (tmp_path / "foo.txt").read_text() == "hi\n"
