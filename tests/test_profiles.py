"""Profiles over the real CLI: each profile is a daemon of its own (data dir, socket, token,
logs), chosen with --profile or $CHEETAHCLAWS_PROFILE, listed by daemon list-profiles, and
told to the runtimes it starts (issue 16 item 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cc_daemon.client import Client
from helpers.daemons import cli, wait_for
from helpers.frontend import command_output


def serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running(profile: str) -> dict:
    result = cli("daemon", "status", "--json", "--profile", profile)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    assert process.wait(15) == 0


def test_two_profiles_are_two_daemons_each_found_by_its_name():
    base = Path(os.environ["CHEETAHCLAWS_HOME"])
    default, work = serve(), serve("--profile", "work")
    try:
        status = wait_for(lambda: running("work"), 20, message="the work profile's daemon")
        assert status["data_dir"] == str(base / "profiles" / "work")
        assert status["address"] == f"unix://{base}/profiles/work/run/daemon.sock"
        assert wait_for(lambda: running("default"), 20)["data_dir"] == str(base)
        assert running("default")["pid"] != status["pid"]

        # $CHEETAHCLAWS_PROFILE names the profile when no flag does; the flag wins over it.
        by_env = cli("rpc", "system.status", env={"CHEETAHCLAWS_PROFILE": "work"})
        assert json.loads(by_env.stdout)["pid"] == status["pid"]
        flag_wins = cli("rpc", "system.status", "--profile", "default", env={"CHEETAHCLAWS_PROFILE": "work"})
        assert json.loads(flag_wins.stdout)["pid"] == running("default")["pid"]

        listed = json.loads(cli("daemon", "list-profiles", "--json").stdout)
        assert [(row["profile"], row["running"], row["data_dir"]) for row in listed] == [
            ("default", True, str(base)), ("work", True, str(base / "profiles" / "work"))]
        assert listed[1]["service"] == "cheetahclaws-daemon-work" and listed[0]["service"] == "cheetahclaws-daemon"
        text = cli("daemon", "list-profiles").stdout
        assert "work" in text and f"pid {status['pid']}" in text
    finally:
        stop(work)
        stop(default)
    listed = json.loads(cli("daemon", "list-profiles", "--json").stdout)
    assert [row["running"] for row in listed] == [False, False]


def test_a_runtime_learns_the_profile_of_the_daemon_that_runs_it(tmp_path):
    daemon = serve("--profile", "agents")
    try:
        wait_for(lambda: running("agents"), 20, message="the agents profile's daemon")
        client = Client.connect(data_dir=Path(os.environ["CHEETAHCLAWS_HOME"]) / "profiles" / "agents", kind="repl")
        assert command_output(client, tmp_path, ["printenv", "CHEETAHCLAWS_PROFILE"]) == "agents\n"
        client.close()
    finally:
        stop(daemon)


@pytest.mark.parametrize("args, env, fragment", [
    (["daemon", "status", "--profile", "Work"], {}, "profile name 'Work'"),
    (["daemon", "status", "--profile", "-x"], {}, "profile"),
    (["daemon", "status", "--profile", "a" * 32], {}, "1-31 characters"),
    (["daemon", "status"], {"CHEETAHCLAWS_PROFILE": "../etc"}, "profile name '../etc'"),
    (["daemon", "status", "--profile", "work", "--data-dir", "/tmp/x"], {}, "not allowed with argument"),
])
def test_a_bad_profile_is_a_usage_error_naming_it(args, env, fragment):
    result = cli(*args, env=env)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


def test_every_verb_takes_a_profile():
    for verb in (["serve"], ["daemon", "status"], ["daemon", "stop"], ["daemon", "logs"], ["daemon", "rotate-token"],
                 ["daemon", "doctor"], ["daemon", "open"], ["rpc"], ["events"], ["session", "ls"], ["session", "new"]):
        result = cli(*verb, "--help")
        assert "--profile NAME" in result.stdout, verb
