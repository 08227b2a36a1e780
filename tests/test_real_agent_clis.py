"""The real Claude Code and Codex CLIs, from the npm registry at the pinned versions, with
no account (issue 17 item 3): what can be checked without one.

- claude: the exact command line the adapter runs is accepted (no usage error), and a turn
  without credentials ends ``failed`` with Claude Code's authentication error, reported
  through the daemon as a runtime error.
- codex: ``app-server`` accepts the adapter's calls (initialize, initialized, thread/start,
  turn/start, turn/interrupt) without an account. Without credentials and without a
  network, Codex retries its model connection instead of failing on authentication (each
  retry reaches the session as a runtime log), so the turn is interrupted through the
  daemon and must end ``cancelled``.

On a machine without node and npm these tests skip, saying why.
"""

from __future__ import annotations

import os

import pytest

from helpers.agent_clis import PINNED, install
from helpers.daemons import short_tmpdir, wait_for
from helpers.frontend import Watcher, client_of


@pytest.fixture(scope="module")
def cli_bin():
    directory, why_not = install()
    if directory is None:
        pytest.skip(why_not)
    return directory


def session_with_real(daemon, runtime: str, cli_bin, home) -> tuple:
    client = client_of(daemon, "repl")
    cwd = short_tmpdir()
    env = {"PATH": f"{cli_bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)}
    session_id = client.call("session.create", runtime=runtime, cwd=str(cwd), env=env)["session_id"]
    return client, session_id, Watcher(client, session_id, since=0)


def test_claude_accepts_the_adapters_flags_and_fails_on_authentication(tcp_daemon, cli_bin, private_home):
    client, session_id, watcher = session_with_real(tcp_daemon, "claude", cli_bin, private_home)
    turn_id = client.call("session.send", session_id=session_id, text="say hi")["turn_id"]
    done = watcher.wait("turn_done", turn_id=turn_id, timeout=90)["data"]
    errors = " ".join(event["data"]["message"] for event in watcher.find("runtime_error"))
    assert done["status"] == "failed", errors
    assert "authentication_failed" in errors or "Not logged in" in errors, errors
    assert "unknown option" not in errors and "requires --verbose" not in errors
    logs = " ".join(event["data"]["message"] for event in watcher.find("runtime_log"))
    assert "claude session" in logs  # its init record: the stream-json input was understood
    watcher.close()


def test_codex_app_server_accepts_the_adapters_calls_and_its_interrupt(tcp_daemon, cli_bin, private_home):
    client, session_id, watcher = session_with_real(tcp_daemon, "codex", cli_bin, private_home)
    turn_id = client.call("session.send", session_id=session_id, text="say hi")["turn_id"]
    # Codex reports its retries to reach the model: the turn reached it, started, and runs.
    wait_for(lambda: [e for e in watcher.find("runtime_log") if e["data"]["message"].startswith("codex: ")],
             timeout=60, message="codex working on the turn")
    client.call("session.cancel", session_id=session_id)
    done = watcher.wait("turn_done", turn_id=turn_id, timeout=30)["data"]
    refused = [event["data"]["message"] for event in watcher.find("runtime_error") if "refused" in event["data"]["message"]]
    everything = [(event["type"], event["data"]) for event in watcher.events if event["type"] not in ("text_chunk",)]
    assert done["status"] == "cancelled" and not refused, everything
    watcher.close()


def test_the_pinned_versions_are_the_ones_installed(cli_bin):
    import subprocess

    for program, (_, version) in PINNED.items():
        printed = subprocess.run([str(cli_bin / program), "--version"], capture_output=True, text=True, timeout=60)
        assert version in printed.stdout, printed
