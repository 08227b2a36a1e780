"""The Python examples in examples/ run as documented against real daemons.

Each example is run unmodified as a subprocess, finding the daemon the way a user's copy
would (its discovery file, through ``--data-dir`` or ``$CHEETAHCLAWS_HOME``), and these
tests check what it printed and how it exited. The custom runtime's protocol transcript
in its docstring is replayed against it, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cc_daemon.client import RpcCallError
from cc_daemon.errors import RUNTIME_UNAVAILABLE

from helpers.daemons import Running, short_tmpdir, wait_for
from helpers.frontend import Watcher, client_of, wait_state

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str, *args: str, home: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``examples/<name>`` to completion; ``home`` is given as ``$CHEETAHCLAWS_HOME``."""
    env = {**os.environ, **({"CHEETAHCLAWS_HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


class Follower:
    """An example left running, its stdout collected line by line as it arrives."""

    def __init__(self, name: str, *args: str):
        self.process = subprocess.Popen([sys.executable, str(EXAMPLES / name), *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_lines(self, predicate, count: int, timeout: float = 10.0) -> list[str]:
        def matching():
            found = [line for line in list(self.lines) if predicate(line)]
            return found if len(found) >= count else None
        return wait_for(matching, timeout, message=f"{count} matching lines from the example")

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; returns the exit code and stderr."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(10)
        self._reader.join(5)
        return code, self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            stream.close()


@pytest.fixture
def follow():
    started: list[Follower] = []

    def start(name: str, *args: str) -> Follower:
        started.append(Follower(name, *args))
        return started[-1]

    yield start
    for follower in started:
        follower.kill()


def line_fields(line: str) -> tuple[str, str, str]:
    """(id, type, session) of a watch_events line."""
    event_id, _clock, kind, session = line.split(maxsplit=4)[:4]
    return event_id, kind, session


def history_of(client, session_id: str, kind: str) -> list[dict]:
    """The session's events of one type, from the durable log."""
    events = client.call("session.history", session_id=session_id)["events"]
    return [event for event in events if event["type"] == kind]


def demo_turn(running: Running, cwd: Path, text: str) -> str:
    """A demo session that has finished one turn; returns its id."""
    client = client_of(running, "setup")
    session_id = client.call("session.create", runtime="demo", cwd=str(cwd))["session_id"]
    watcher = Watcher(client, session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text=text)["turn_id"]
    watcher.wait("turn_done", turn_id=turn_id)
    watcher.close()
    return session_id


# -- watch_events.py --------------------------------------------------------------------------
def is_ping(line: str) -> bool:
    return " ping_received " in line


def test_watch_events_follows_across_a_daemon_restart_and_stops_cleanly_on_ctrl_c(subprocess_daemon, follow):
    first = subprocess_daemon()
    for n in (1, 2):
        first.rpc("echo.ping", {"n": n})
    watching = follow("watch_events.py", "--since", "0", "--data-dir", str(first.data_dir))
    watching.wait_lines(is_ping, 2)

    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(10) == 0
    second = subprocess_daemon(data_dir=first.data_dir)
    for n in (3, 4):
        second.rpc("echo.ping", {"n": n})
    pings = watching.wait_lines(is_ping, 4, timeout=15)

    code, stderr = watching.interrupt()
    assert code == 130 and "Traceback" not in stderr, stderr
    assert "reconnected" in stderr
    assert [json.loads(line.split(maxsplit=4)[4])["params"]["n"] for line in pings] == [1, 2, 3, 4]
    ids = [int(line_fields(line)[0]) for line in pings]
    assert ids == sorted(set(ids))  # every event once, in id order, across the restart
    assert any(line_fields(line)[1] == "shutdown" for line in watching.lines)


def test_watch_events_filters_by_type_and_by_session(tcp_daemon, follow, tmp_path):
    ours, other = demo_turn(tcp_daemon, tmp_path, "hello"), demo_turn(tcp_daemon, tmp_path, "bye")
    tcp_daemon.rpc("echo.ping", {"n": 1})
    data_dir = str(tcp_daemon.data_dir)

    by_type = follow("watch_events.py", "--since", "0", "--type", "turn_done", "--type", "ping_received",
                     "--data-dir", data_dir)
    by_type.wait_lines(is_ping, 1)
    lines = list(by_type.lines)  # replay is in id order: the ping came last
    assert [line_fields(line)[1:] for line in lines] == [("turn_done", ours), ("turn_done", other),
                                                        ("ping_received", "-")]

    by_session = follow("watch_events.py", "--since", "0", "--session", ours, "--data-dir", data_dir)
    by_session.wait_lines(lambda line: " turn_done " in line, 1)
    lines = list(by_session.lines)
    assert {line_fields(line)[2] for line in lines} == {ours}
    assert {"session_created", "text_chunk", "turn_done"} <= {line_fields(line)[1] for line in lines}


def test_watch_events_without_a_daemon_says_how_to_start_one():
    result = example("watch_events.py", "--data-dir", str(short_tmpdir()))
    assert result.returncode == 3 and "cheetahclaws serve" in result.stderr and "Traceback" not in result.stderr


# -- two_frontends.py -------------------------------------------------------------------------
def test_two_frontends_driver_answers_and_the_watcher_is_refused(daemon):
    result = example("two_frontends.py", home=daemon.data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = ["[driver ] created demo session", "[watcher] permission_request",
             "[watcher] tried to approve", "refused, error -32001", "[driver ] approved",
             "[watcher] permission_answered", "[watcher] tool_start Write", "[watcher] turn_done completed",
             "ok: hello.txt in the session's cwd holds", "[driver ] closed session", "OK:"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out

    session_id = out.split("created demo session ", 1)[1].split()[0]
    client = client_of(daemon, "check")
    answered = history_of(client, session_id, "permission_answered")
    assert [event["data"]["answer"]["reason"] for event in answered] == ["go ahead"]  # only the driver's
    assert wait_state(client, session_id, "stopped")


def test_two_frontends_without_a_daemon_exits_3():
    result = example("two_frontends.py", home=short_tmpdir())
    assert result.returncode == 3 and "cheetahclaws serve" in result.stderr and "Traceback" not in result.stderr


# -- custom_runtime.py ------------------------------------------------------------------------
def docstring_transcript() -> tuple[list[str], list[str]]:
    """The ``->`` (daemon to runtime) and ``<-`` lines of custom_runtime.py's docstring."""
    source = (EXAMPLES / "custom_runtime.py").read_text()
    lines = [line.strip() for line in ast.get_docstring(ast.parse(source)).splitlines()]
    return ([line[3:] for line in lines if line.startswith("-> ")],
            [line[3:] for line in lines if line.startswith("<- ")])


def test_custom_runtime_speaks_the_protocol_exactly_as_its_docstring_shows():
    to_runtime, from_runtime = docstring_transcript()
    assert [json.loads(line)["type"] for line in to_runtime] == ["init", "turn", "stop"]
    done = subprocess.run([sys.executable, str(EXAMPLES / "custom_runtime.py"), "--as-runtime"], text=True,
                          input="\n".join(to_runtime) + "\n", capture_output=True, timeout=15)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [json.loads(line) for line in from_runtime]


def test_custom_runtime_plugs_into_the_daemon_and_streams_its_reply(daemon):
    result = example("custom_runtime.py", "--reverse", "--delay", "0", "hello there",
                     "--data-dir", str(daemon.data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    started, reply, done = result.stdout.splitlines()
    assert started.startswith("session ses_") and "custom_runtime.py --as-runtime" in started
    assert reply == "ereht olleh"
    assert done == "turn completed, usage {'input_tokens': 2, 'output_tokens': 2}"
    session_id = started.split()[1]
    client = client_of(daemon, "check")
    assert [event["data"]["text"] for event in history_of(client, session_id, "text_chunk")] == ["ereht ", "olleh"]
    assert wait_state(client, session_id, "stopped")


def test_a_cancel_ends_a_custom_runtime_turn_early(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    command = [sys.executable, str(EXAMPLES / "custom_runtime.py"), "--as-runtime", "--delay", "30"]
    session_id = client.call("session.create", runtime="custom", cwd=str(tmp_path), args=command)["session_id"]
    watcher = Watcher(client, session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text="one two three")["turn_id"]
    assert watcher.wait("text_chunk", turn_id=turn_id)["data"]["text"] == "ONE "
    client.call("session.cancel", session_id=session_id)
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "cancelled"
    assert watcher.text_of(turn_id) == "ONE "
    watcher.close()


def test_the_custom_runtime_refuses_a_program_it_cannot_start(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    for args, words in (([], "needs the program"), (["no-such-program-xyz"], "not found on PATH"),
                        (["./missing.py"], "not an executable file")):
        with pytest.raises(RpcCallError) as caught:
            client.call("session.create", runtime="custom", cwd=str(tmp_path), args=args)
        assert caught.value.code == RUNTIME_UNAVAILABLE and words in caught.value.message
        assert "the custom runtime" in caught.value.message
