"""The daemon's CLI as a user runs it: serve, daemon status / stop / logs / rotate-token."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import pytest

from helpers.daemons import cli, short_tmpdir, spawn_daemon, wait_for


# Loaded on first use, not by a daemon that only started and answered pings: each would add
# tens of milliseconds to every cold start, or hundreds of KB to the idle RSS, or both.
LAZY_MODULES = ("jsonschema", "importlib.metadata", "subprocess", "logging.handlers", "requests",
                "cc_daemon.client", "cc_daemon.commands.session_verb", "cc_daemon.commands.daemon_verbs",
                "tomllib", "difflib")

SERVE_AND_LIST_MODULES = """
import json, sys
before = set(sys.modules)
from cc_daemon.commands import build_parser, serve
from cc_daemon.daemon import Daemon
args = build_parser("serve").parse_args(["serve", "--data-dir", sys.argv[1], "--listen", "tcp://127.0.0.1:0"])
daemon = Daemon(serve.options_from(args))
daemon.start()
reply = daemon.dispatcher.handle(b'{"jsonrpc": "2.0", "method": "system.ping", "id": 1}')
daemon.stop()
print(json.dumps({"pong": json.loads(reply.body)["result"], "loaded": sorted(set(sys.modules) - before)}))
"""


def test_a_started_daemon_has_not_loaded_what_only_later_calls_need(tmp_path):
    result = subprocess.run([sys.executable, "-c", SERVE_AND_LIST_MODULES, str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pong"] == "pong"
    assert not [name for name in report["loaded"]
                if any(name == lazy or name.startswith(lazy + ".") for lazy in LAZY_MODULES)]


@pytest.mark.parametrize("args, fragment", [
    (["serve", "--listen", "tcp://nohost"], "HOST:PORT"),
    (["serve", "--listen", "tcp://127.0.0.1:99999"], "out of range"),
    (["serve", "--listen", "unix://relative.sock"], "absolute"),
    (["serve", "--listen", "unix:///tmp/" + "x" * 120 + ".sock"], "longer than the OS limit"),
    (["serve", "--listen", "http://127.0.0.1:1"], "unsupported"),
    (["serve", "--heartbeat-s", "-1"], "must be positive"),
    (["serve", "--bogus"], "unrecognized arguments"),
    (["serve", "--listen", "tcp://10.1.2.3:8765"], "--allow-remote"),
])
def test_bad_flags_exit_2_with_one_readable_line(args, fragment):
    result = cli(*args, "--data-dir", str(short_tmpdir()))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_serve_status_logs_stop_on_unix(subprocess_daemon):
    daemon = subprocess_daemon()
    data_dir = str(daemon.data_dir)
    status = cli("daemon", "status", "--data-dir", data_dir)
    assert status.returncode == 0, status.stderr
    assert f"pid {daemon.process.pid}" in status.stdout and "pong" in status.stdout
    as_json = json.loads(cli("daemon", "status", "--data-dir", data_dir, "--json").stdout)
    assert as_json["transport"] == "unix" and as_json["ping"] == "pong" and as_json["uptime_s"] >= 0
    discovery = daemon.data_dir / "daemon.json"
    assert oct(discovery.stat().st_mode & 0o777) == "0o600"
    socket_path = daemon.address[len("unix://"):]
    assert oct(os.stat(socket_path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(socket_path)).st_mode & 0o777) == "0o700"
    logs = cli("daemon", "logs", "--data-dir", data_dir, "-n", "10")
    assert logs.returncode == 0 and "listening on" in logs.stdout
    two = cli("daemon", "logs", "--data-dir", data_dir, "--lines", "2")  # the reference's spelling
    assert two.returncode == 0 and len(two.stdout.splitlines()) == 2
    stop = cli("daemon", "stop", "--data-dir", data_dir)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert daemon.process.wait(10) == 0
    assert not discovery.exists() and not os.path.exists(socket_path)
    assert not (daemon.data_dir / "run" / "daemon.pid").exists()
    assert cli("daemon", "status", "--data-dir", data_dir).returncode == 3


def test_tcp_with_custom_token_path(subprocess_daemon):
    token_path = short_tmpdir() / "tok"
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0", "--token-path", str(token_path), "--print-token")
    assert oct(token_path.stat().st_mode & 0o777) == "0o600"
    assert len(token_path.read_text().strip()) == 43
    status = cli("daemon", "status", "--data-dir", str(daemon.data_dir))
    assert status.returncode == 0 and "tcp://127.0.0.1:" in status.stdout
    first_line = daemon.process.stdout.readline()
    assert first_line.startswith("cc_daemon listening on tcp://127.0.0.1:")
    assert daemon.process.stdout.readline().strip() == f"token: {token_path.read_text().strip()}"
    assert cli("daemon", "stop", "--data-dir", str(daemon.data_dir)).returncode == 0
    assert daemon.process.wait(10) == 0


def test_second_serve_refused_while_first_alive(subprocess_daemon):
    daemon = subprocess_daemon()
    second = cli("serve", "--data-dir", str(daemon.data_dir))
    assert second.returncode == 2
    assert "already running" in second.stderr and str(daemon.process.pid) in second.stderr


def test_stale_files_after_kill_9_are_cleaned_and_serve_starts(subprocess_daemon):
    daemon = subprocess_daemon()
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    assert (daemon.data_dir / "daemon.json").exists()
    stale = cli("daemon", "status", "--data-dir", str(daemon.data_dir))
    assert stale.returncode == 1 and "stale" in stale.stdout
    again = subprocess_daemon(data_dir=daemon.data_dir)
    assert again.rpc("system.ping")["result"] == "pong"


def test_socket_path_owned_by_something_else_is_never_unlinked():
    root = short_tmpdir()
    squatter_path = root / "taken.sock"
    squatter = socket.socket(socket.AF_UNIX)
    squatter.bind(str(squatter_path))
    squatter.listen(1)
    try:
        result = cli("serve", "--data-dir", str(root / "d"), "--listen", f"unix://{squatter_path}")
        assert result.returncode == 2 and "another process is listening" in result.stderr
        assert squatter_path.exists()
    finally:
        squatter.close()
    regular = root / "file.sock"
    regular.write_text("precious")
    result = cli("serve", "--data-dir", str(root / "d"), "--listen", f"unix://{regular}")
    assert result.returncode == 2 and "not a socket" in result.stderr
    assert regular.read_text() == "precious"


def test_a_port_in_use_refuses_the_start_before_anything_is_written():
    """Issue 13 item 10: the bind is tried first, so a taken port leaves no data dir (no
    lock, log, token or migrated database) behind for the user to wonder about."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    data_dir = short_tmpdir() / "d"
    try:
        result = cli("serve", "--data-dir", str(data_dir), "--listen", f"tcp://127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
    assert result.returncode == 2 and "cannot listen on tcp://127.0.0.1:" in result.stderr
    assert not data_dir.exists()


def test_a_start_that_fails_after_the_unix_bind_leaves_no_socket(tmp_path):
    """A database that cannot be opened fails the start after the socket was bound: the
    socket goes with it, and the next start is not met by a leftover."""
    root = short_tmpdir()
    (root / "daemon.db").mkdir(parents=True)  # a directory where the database file goes
    result = cli("serve", "--data-dir", str(root))
    assert result.returncode == 2
    assert not (root / "run" / "daemon.sock").exists()
    assert not (root / "daemon.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_gracefully_with_exit_0(subprocess_daemon, sig):
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    response = daemon.get("/events?since=0", stream=True, timeout=(5, 10))
    daemon.process.send_signal(sig)
    body = b"".join(response.iter_content(chunk_size=None))
    assert b"event: shutdown" in body and b'"reason":"graceful"' in body
    assert daemon.process.wait(10) == 0
    assert not (daemon.data_dir / "daemon.json").exists()


def test_status_when_never_started():
    result = cli("daemon", "status", "--data-dir", str(short_tmpdir()))
    assert result.returncode == 3 and "not running" in result.stdout


def test_stop_when_not_running_is_success():
    assert cli("daemon", "stop", "--data-dir", str(short_tmpdir())).returncode == 0


def test_logs_follow_prints_new_lines(subprocess_daemon):
    daemon = subprocess_daemon()
    follower = subprocess.Popen([sys.executable, "-m", "cc_daemon", "daemon", "logs", "-n", "1", "-f",
                                 "--data-dir", str(daemon.data_dir)], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()
    try:
        # Once the last line written so far is shown, the follower is at the end of the log:
        # what it shows next was written after it started following.
        lines.get(timeout=20)
        cli("daemon", "stop", "--data-dir", str(daemon.data_dir))
        assert "stopping" in lines.get(timeout=20)
    finally:
        follower.kill()
        follower.wait(10)
        follower.stdout.close()


def test_default_data_dir_from_environment():
    home = short_tmpdir()
    process, info = spawn_daemon(home / "ignored-if-env-used")
    process.send_signal(signal.SIGTERM)
    process.wait(10)
    env_home = short_tmpdir()
    proc = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve"], env={**os.environ,
                            "CHEETAHCLAWS_HOME": str(env_home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (env_home / "daemon.json").exists(), 20, message="discovery under $CHEETAHCLAWS_HOME")
        assert (env_home / "run" / "daemon.sock").exists()
        assert cli("daemon", "status", env={"CHEETAHCLAWS_HOME": str(env_home)}).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("verb", ["serve", "daemon status", "daemon stop", "daemon logs", "daemon rotate-token",
                                  "daemon doctor", "daemon open"])
def test_serve_and_every_daemon_action_document_an_example_and_their_exit_codes(verb):
    words = [*verb.split(), "--help"]
    text = " ".join(cli(*words).stdout.split())
    assert f"cheetahclaws {verb}" in text.split("example", 1)[1], text
    assert "exit codes:" in text and "2 bad usage" in text


def test_status_documents_every_lsb_code_it_returns():
    text = " ".join(cli("daemon", "status", "--help").stdout.split())
    for code in ("0 running", "1 not running, but a discovery file names a dead pid", "3 not running",
                 "4 cannot tell"):
        assert code in text, text


def test_rotate_token_without_a_daemon_says_no_daemon_was_told(tmp_path):
    result = cli("daemon", "rotate-token", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no daemon is running, so no daemon was told" in result.stdout
    assert len((tmp_path / "daemon_token").read_text().strip()) >= 32
