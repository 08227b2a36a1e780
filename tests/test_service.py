"""Running under a service manager (issue 16 item 1), over the real CLI and a real daemon:
the systemd unit and the launchd agent install-service writes (checked by
``systemd-analyze verify`` where it exists), what install and uninstall do without a
running service manager, and the notify protocol on a real datagram socket: READY=1 once
the daemon answers, WATCHDOG=1 while it runs, STOPPING=1 when it stops, and nothing of it
for the runtimes."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cc_daemon.client import Client
from cc_daemon.commands.daemon_service import systemd_quote
from helpers.daemons import cli, short_tmpdir
from helpers.frontend import command_output


def unit_of(*args: str) -> tuple[Path, str]:
    result = cli("daemon", "install-service", "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    head, text = result.stdout.split(":\n\n", 1)
    return Path(head.removeprefix("would write ")), text.split("\nwould run:\n")[0]


def keys(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_the_systemd_unit_runs_serve_for_the_profile_as_a_notify_service(private_home):
    path, unit = unit_of("--profile", "work", "--listen", "tcp://127.0.0.1:8765")
    assert path == private_home / ".config" / "systemd" / "user" / "cheetahclaws-daemon-work.service"
    found = keys(unit)
    assert shlex.split(found["ExecStart"][0]) == [sys.executable, "-m", "cc_daemon", "serve", "--profile", "work",
                                                   "--listen", "tcp://127.0.0.1:8765"]
    for key, value in {"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "KillMode": "mixed",
                       "RestartPreventExitStatus": "2", "WatchdogSec": "60", "StandardOutput": "journal",
                       "WantedBy": "default.target"}.items():
        assert found[key] == [value], key
    assert f"CHEETAHCLAWS_HOME={os.environ['CHEETAHCLAWS_HOME']}" in found["Environment"]
    default_path, default_unit = unit_of()
    assert default_path.name == "cheetahclaws-daemon.service" and "--profile default" in default_unit
    assert not path.exists()  # a dry run writes nothing


def test_systemd_analyze_verifies_the_written_unit(private_home, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here: the unit text is checked by the test above")
    _, unit = unit_of("--profile", "ci", "--listen", "unix:///tmp/with space/d.sock")
    written = tmp_path / "cheetahclaws-daemon-ci.service"
    written.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(written)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(written) not in result.stderr  # no warning about the unit itself


@pytest.mark.parametrize("word, quoted", [
    ("/usr/bin/python3", "/usr/bin/python3"),
    ("unix:///tmp/with space/d.sock", '"unix:///tmp/with space/d.sock"'),
    ("100%", "100%%"),
    ("$HOME", "$$HOME"),
    ('say "hi"\\', '"say \\"hi\\"\\\\"'),
])
def test_systemd_quoting_keeps_each_word_as_given(word, quoted):
    assert systemd_quote(word) == quoted


def test_the_launchd_agent_keeps_the_daemon_alive_after_a_crash(private_home):
    path, text = unit_of("--profile", "work", "--platform", "launchd")
    assert path == private_home / "Library" / "LaunchAgents" / "dev.cheetahclaws.cheetahclaws-daemon-work.plist"
    agent = plistlib.loads(text.encode())
    assert agent["Label"] == "dev.cheetahclaws.cheetahclaws-daemon-work"
    assert agent["ProgramArguments"] == [sys.executable, "-m", "cc_daemon", "serve", "--profile", "work"]
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    assert agent["EnvironmentVariables"]["CHEETAHCLAWS_HOME"] == os.environ["CHEETAHCLAWS_HOME"]


def test_install_without_a_service_manager_writes_the_unit_and_says_what_to_run(private_home):
    no_tools = short_tmpdir()  # a PATH with neither systemctl nor loginctl
    result = cli("daemon", "install-service", "--profile", "work", env={"PATH": str(no_tools)})
    unit = private_home / ".config" / "systemd" / "user" / "cheetahclaws-daemon-work.service"
    assert result.returncode == 1 and unit.exists()
    assert "systemctl not found" in result.stderr and "systemctl --user daemon-reload" in result.stderr
    assert "Traceback" not in result.stderr

    removed = cli("daemon", "uninstall-service", "--profile", "work", env={"PATH": str(no_tools)})
    assert removed.returncode == 1 and not unit.exists() and "systemctl not found" in removed.stderr
    again = cli("daemon", "uninstall-service", "--profile", "work")
    assert again.returncode == 0 and "no service installed" in again.stdout


def test_a_service_needs_a_profile_not_a_data_dir(tmp_path):
    result = cli("daemon", "install-service", "--dry-run", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "--profile NAME rather than --data-dir" in result.stderr
    bad = cli("daemon", "install-service", "--dry-run", "--listen", "tcp://nohost")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


# -- the notify protocol, from a real daemon -----------------------------------------------
class NotifySocket:
    """The service manager's end: a datagram socket the daemon is told about."""

    def __init__(self, address: str):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.socket.settimeout(20)

    def next(self) -> dict[str, str]:
        message = self.socket.recv(4096).decode()
        return dict(line.split("=", 1) for line in message.splitlines())

    def close(self) -> None:
        self.socket.close()


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_a_daemon_notifies_ready_watchdog_and_stopping(kind, tmp_path):
    root = short_tmpdir()
    address = str(root / "notify.sock") if kind == "path" else f"@ccd-test-{os.getpid()}-{root.name}"
    manager = NotifySocket(address)
    data_dir = root / "data"
    daemon = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(data_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    try:
        ready = manager.next()
        assert ready["READY"] == "1" and ready["MAINPID"] == str(daemon.pid)
        assert ready["STATUS"] == f"listening on unix://{data_dir}/run/daemon.sock"
        # Ready means answering: the first call after READY=1 succeeds.
        client = Client.connect(data_dir=data_dir, kind="repl")
        assert client.call("system.ping") == "pong"
        assert manager.next() == {"WATCHDOG": "1"} and manager.next() == {"WATCHDOG": "1"}

        # The runtimes never see the manager's variables: they must not speak for the daemon.
        assert command_output(client, tmp_path, ["sh", "-c", "env | grep -c -E '^(NOTIFY_SOCKET|WATCHDOG_)' || true"]) == "0\n"
        client.close()

        daemon.send_signal(signal.SIGTERM)
        message = manager.next()
        while message == {"WATCHDOG": "1"}:  # pings sent before the signal arrived
            message = manager.next()
        assert message == {"STOPPING": "1", "STATUS": "stopping"}
        assert daemon.wait(15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        manager.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_daemon_without_a_manager_or_with_a_gone_one_runs_on(tmp_path):
    root = short_tmpdir()
    daemon = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(root / "data")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "NOTIFY_SOCKET": str(root / "nobody-listens.sock"),
                                   "WATCHDOG_USEC": "100000"})
    try:
        assert "listening on" in daemon.stdout.readline()
        status = json.loads(cli("daemon", "status", "--json", "--data-dir", str(root / "data")).stdout)
        assert status["running"] is True
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        log = (root / "data" / "logs" / "daemon.log").read_text()
        assert log.count("cannot notify the service manager") == 1  # said once, not at every ping
    finally:
        if daemon.poll() is None:
            daemon.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_the_unit_s_own_command_line_restarted_as_systemctl_restart_does_brings_sessions_back(tmp_path):
    """No systemd runs here, so this plays its part: the unit's ExecStart and Environment, run
    with a NOTIFY_SOCKET; `systemctl --user restart` is SIGTERM to the main process
    (KillMode=mixed), then the same command again."""
    _, unit = unit_of("--profile", "svc")
    found = keys(unit)
    argv = shlex.split(found["ExecStart"][0])
    env = {**os.environ, **dict(shlex.split(line)[0].split("=", 1) for line in found["Environment"])}
    root = short_tmpdir()
    manager = NotifySocket(str(root / "notify.sock"))
    env["NOTIFY_SOCKET"] = str(root / "notify.sock")
    data_dir = Path(os.environ["CHEETAHCLAWS_HOME"]) / "profiles" / "svc"
    try:
        first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert manager.next()["READY"] == "1"
        client = Client.connect(data_dir=data_dir, kind="repl")
        session_id = client.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]
        client.close()
        first.send_signal(signal.SIGTERM)
        while manager.next().get("STOPPING") != "1":
            pass
        assert first.wait(15) == 0

        second = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert manager.next()["READY"] == "1"
        client = Client.connect(data_dir=data_dir, kind="repl")
        assert client.call("session.get", session_id=session_id)["state"] in ("resuming", "idle")
        client.close()
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        manager.close()
        shutil.rmtree(root, ignore_errors=True)
