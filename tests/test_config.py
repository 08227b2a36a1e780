"""<data-dir>/config.toml and the environment as sources of serve's settings, over the real
CLI (issue 16 item 3): flag over environment over file over default, `daemon config` says
where each value came from, and an unknown key or a bad value names the key and the line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from cc_daemon.commands import settings
from cc_daemon.daemon import DaemonOptions
from cc_daemon.transport.servers import Limits
from helpers.daemons import cli, short_tmpdir


@pytest.fixture
def data_dir() -> Path:
    root = short_tmpdir() / "data"
    root.mkdir(mode=0o700)
    return root


def write_config(data_dir: Path, text: str, mode: int = 0o600) -> Path:
    path = data_dir / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def effective(data_dir: Path, env: dict | None = None) -> dict[str, dict]:
    result = cli("daemon", "config", "--json", "--data-dir", str(data_dir), env=env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)["settings"]}


def test_the_file_sets_what_serve_uses_and_a_flag_or_the_environment_wins(data_dir):
    config = write_config(data_dir, "# my daemon\nlisten = ['tcp://127.0.0.1:0']\nmax_sessions = 2\n"
                                    "log_level = 'debug'\nallow_origin = ['http://localhost:3000']\n")
    shown = effective(data_dir, env={"CHEETAHCLAWS_LOG_LEVEL": "warning"})
    assert shown["max_sessions"] == {"name": "max_sessions", "value": 2, "source": f"{config} line 3",
                                     "flag": "--max-sessions", "env": "CHEETAHCLAWS_MAX_SESSIONS"}
    assert (shown["log_level"]["value"], shown["log_level"]["source"]) == ("warning", "env CHEETAHCLAWS_LOG_LEVEL")
    assert (shown["listen"]["value"], shown["listen"]["source"]) == (["tcp://127.0.0.1:0"], f"{config} line 2")
    assert (shown["heartbeat_s"]["value"], shown["heartbeat_s"]["source"]) == (15.0, "default")
    text = cli("daemon", "config", "--data-dir", str(data_dir)).stdout
    assert "max_sessions             2" in text and f"{config} line 3" in text and "a flag given to serve wins" in text

    # A real daemon listens where the file says, and refuses a third session as it says ...
    daemon = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(data_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "CHEETAHCLAWS_MAX_SESSIONS": "1"})
    try:
        assert "listening on tcp://127.0.0.1:" in daemon.stdout.readline()
        status = json.loads(cli("rpc", "system.status", "--data-dir", str(data_dir)).stdout)
        assert status["transport"] == "tcp"
        first = cli("rpc", "session.create", "runtime=demo", f"cwd={data_dir}", "--data-dir", str(data_dir))
        assert first.returncode == 0, first.stderr
        second = cli("rpc", "session.create", "runtime=demo", f"cwd={data_dir}", "--data-dir", str(data_dir))
        assert second.returncode == 1 and "-32011" in second.stderr  # the environment's 1, not the file's 2
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    # ... and a flag wins over the file: a Unix socket only.
    socket = short_tmpdir() / "d.sock"
    daemon = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(data_dir),
                               "--listen", f"unix://{socket}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout.readline().startswith(f"cc_daemon listening on unix://{socket} (pid")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0


@pytest.mark.parametrize("text, message", [
    ("max_sessions = 4\nmax_sesions = 3\n", "line 2: unknown key 'max_sesions' (did you mean 'max_sessions'?)"),
    ("\n\nmax_sessions = 'many'\n", "line 3: max_sessions must be an integer, not str 'many'"),
    ("heartbeat_s = -1\n", "line 1: heartbeat_s must be positive and finite, not -1"),
    ("max_sessions = true\n", "line 1: max_sessions must be an integer, not bool True"),
    ("event_log_sync = 'sometimes'\n", "line 1: event_log_sync must be one of normal, full, not 'sometimes'"),
    ("listen = 'tcp://127.0.0.1:0'\n", "line 1: listen must be an array of strings"),
    ("allow_remote = 'yes'\n", "line 1: allow_remote must be true or false"),
    ("[server]\nport = 1\n", "line 1: unknown key 'server'"),
    ("log_level = \n", "not valid TOML: Invalid value (at line 1, column 13)"),
])
def test_a_bad_file_stops_serve_and_config_naming_the_key_and_the_line(data_dir, text, message):
    path = write_config(data_dir, text)
    for verb in (["serve"], ["daemon", "config"]):
        result = cli(*verb, "--data-dir", str(data_dir), timeout=20)
        assert result.returncode == 2 and str(path) in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (data_dir / "daemon.db").exists()  # refused before anything was made


def test_a_bad_environment_value_names_the_variable(data_dir):
    result = cli("serve", "--data-dir", str(data_dir), env={"CHEETAHCLAWS_MAX_CONNECTIONS": "0"})
    assert result.returncode == 2
    assert "environment variable CHEETAHCLAWS_MAX_CONNECTIONS: must be positive and finite, not 0" in result.stderr
    listed = effective(data_dir, env={"CHEETAHCLAWS_LISTEN": "unix:///tmp/a.sock, tcp://127.0.0.1:0"})
    assert listed["listen"]["value"] == ["unix:///tmp/a.sock", "tcp://127.0.0.1:0"]
    assert effective(data_dir, env={"CHEETAHCLAWS_NO_AUDIT": "yes"})["no_audit"]["value"] is True


def test_a_config_file_others_can_write_is_refused(data_dir):
    """Another local user able to write it could set allow_remote or a token path of theirs."""
    path = write_config(data_dir, "max_sessions = 3\n", mode=0o666)
    os.chmod(path, 0o666)
    result = cli("serve", "--data-dir", str(data_dir))
    assert result.returncode == 2 and f"chmod go-w {path}" in result.stderr


def test_the_table_s_defaults_are_the_daemon_s():
    fields = {field.name: field.default for field in dataclasses.fields(DaemonOptions)}
    limits = Limits()
    daemon_defaults = {
        "token_path": fields["token_path"], "heartbeat_s": fields["heartbeat_s"], "no_audit": not fields["audit"],
        "unauthenticated_metrics": fields["unauthenticated_metrics"], "allow_remote": fields["allow_remote"],
        "allow_origin": list(fields["allow_origins"]), "event_buffer": fields["event_buffer"],
        "event_buffer_mb": fields["event_buffer_mb"], "retention_events": fields["retention_events"],
        "retention_days": fields["retention_days"], "event_log_sync": fields["event_log_sync"],
        "max_body_bytes": limits.max_body_bytes, "max_connections": limits.max_connections,
        "log_level": fields["log_level"], "log_format": fields["log_format"], "max_sessions": fields["max_sessions"],
        "max_queued_turns": fields["max_queued_turns"]}
    assert {name: settings.BY_NAME[name].default for name in daemon_defaults} == daemon_defaults
    assert set(settings.BY_NAME) == set(daemon_defaults) | {"listen", "print_token"}


@hypothesis_settings(max_examples=150, deadline=None)
@given(order=st.permutations(sorted(settings.BY_NAME)), blank=st.lists(st.booleans(), min_size=20, max_size=20),
       count=st.integers(1, 6))
def test_every_key_is_found_on_its_own_line(order, blank, count):
    """tomllib keeps no positions: the line search must find each key where it is set, with
    comments, blank lines and other keys around it."""
    keys = order[:count]
    lines, expected = [], {}
    for i, key in enumerate(keys):
        if blank[i]:
            lines.append(f"# {key} is set below")
        lines.append("")
        expected[key] = len(lines) + 1
        lines.append(f"{key} = {toml_value(settings.BY_NAME[key])}  # {order[-1]} = 1")
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        found = settings.read_config(path)
    assert {key: int(value.source.rsplit(" ", 1)[1]) for key, value in found.items()} == expected


def toml_value(setting) -> str:
    return {"int": "3", "float": "2.5", "bool": "true", "list": "['tcp://127.0.0.1:0']",
            "choice": f"'{setting.choices[0] if setting.choices else ''}'"}.get(setting.kind, "'/tmp/x'")
