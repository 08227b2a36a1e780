"""The released reference's own clients, unchanged, against our daemon on both transports.

``cheetahclaws==3.5.89`` is installed from PyPI into a virtualenv of its own, once per
checkout (``bench.reference``, cached in the git-ignored ``bench/.cache``), and never into
the interpreter that runs these tests. Its CLI (``cheetahclaws daemon status | stop |
rotate-token | logs``), its CLI's RPC helper and its ``spike_client`` then run as its
users run them, with ``HOME`` the test's private home, so that they find our daemon
through ``~/.cheetahclaws/daemon.json`` exactly as they would find theirs. Where cc_daemon
answers otherwise on purpose, RFC 0001 §10 says so; what is asserted here is what those
clients need.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from cc_daemon import __version__
from cc_daemon.client import Client
from cc_daemon.methods.unserved import NOT_SERVED
from helpers.daemons import Running, cli, in_process, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not an installed package

from bench.reference import ReferenceUnavailable, ensure_reference  # noqa: E402

CALLS = Path(__file__).resolve().parent / "helpers" / "reference_calls.py"


@pytest.fixture(scope="session")
def reference() -> Path:
    """The reference's ``cheetahclaws`` executable (its interpreter is ``python`` beside it)."""
    try:
        return ensure_reference()
    except ReferenceUnavailable as exc:
        pytest.fail(f"the reference cheetahclaws==3.5.89 cannot be installed from PyPI: {exc}")


@pytest.fixture(params=["tcp", "unix"])
def ours(request, private_home) -> Iterator[Running]:
    """Our daemon, in this process, with its data dir where the reference looks: ``~/.cheetahclaws``."""
    yield from in_process(request.param, root=private_home / ".cheetahclaws")


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env={**os.environ, **env})


def fields(output: str) -> dict[str, str]:
    """``key: value`` lines, as the reference's ``daemon status`` prints them."""
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in output.splitlines())}


def reference_calls(reference: Path, calls: list[tuple[str, Any]]) -> list[tuple[bool, Any]]:
    """``(ok, payload)`` for each call, from the reference CLI's own RPC helper."""
    done = subprocess.run([str(reference.with_name("python")), str(CALLS)], input=json.dumps(calls),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [tuple(json.loads(line)) for line in done.stdout.splitlines()]


def spike(reference: Path, ours: Running, *args: str) -> dict:
    """One ``spike_client`` command; its printed ``{"status", "body"}``. The token goes in
    ``$CHEETAHCLAWS_TOKEN``, as its help offers, not on a command line others can read."""
    done = run([str(reference.with_name("python")), "-m", "cheetahclaws.daemon.spike_client",
                "--target", ours.address, *args], CHEETAHCLAWS_TOKEN=ours.token or "")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the discovery file -------------------------------------------------------------------
def test_the_discovery_file_has_the_references_fields_in_its_forms(ours):
    record = json.loads((ours.data_dir / "daemon.json").read_text())
    transport, _, bare = ours.address.partition("://")
    assert {key: record[key] for key in ("pid", "transport", "address", "version", "schema")} == {
        "pid": os.getpid(), "transport": transport, "address": bare, "version": __version__, "schema": 1}
    started = datetime.datetime.strptime(record["started_at"], "%Y-%m-%dT%H:%M:%SZ")
    age = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - started
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=1)
    assert record["url"] == ours.address and record["api_version"] == "0"
    assert (record["token_path"] is None) == ours.is_unix


@pytest.mark.parametrize("form", ["reference", "older cc_daemon"])
def test_our_client_and_cli_read_a_record_in_either_older_form(ours, form):
    discovery = ours.data_dir / "daemon.json"
    record = json.loads(discovery.read_text())
    if form == "reference":  # no url, and no token_path while the token is at its default place
        record = {key: record[key] for key in ("pid", "started_at", "transport", "address", "version", "schema")}
    else:
        record = {**{key: record[key] for key in ("pid", "transport", "token_path")}, "address": ours.address}
    discovery.write_text(json.dumps(record))
    with Client.connect(data_dir=ours.data_dir, persist_id=False) as client:
        assert client.ping() == "pong"
    status = cli("daemon", "status", "--data-dir", str(ours.data_dir))
    assert status.returncode == 0 and "pong" in status.stdout, status.stdout + status.stderr


# -- its CLI --------------------------------------------------------------------------------
def test_its_daemon_status_finds_and_pings_ours(ours, reference):
    done = run([str(reference), "daemon", "status"])
    assert done.returncode == 0, done.stdout + done.stderr
    shown = fields(done.stdout)
    transport, _, bare = ours.address.partition("://")
    assert shown["pid"] == str(os.getpid()) and shown["transport"] == transport and shown["address"] == bare
    assert shown["version"] == __version__ and shown["ping"] == "pong"
    assert "uptime" in shown  # it understood our started_at


def test_its_daemon_logs_prints_our_log(ours, reference):
    done = run([str(reference), "daemon", "logs", "-n", "20"])
    assert done.returncode == 0 and f"listening on {ours.address}" in done.stdout, done.stdout + done.stderr


def test_its_rotate_token_is_taken_up_by_ours(ours, reference):
    token_file = ours.data_dir / "daemon_token"
    done = run([str(reference), "daemon", "rotate-token"])
    assert done.returncode == 0 and "rotated" in done.stdout
    if ours.is_unix:  # no token in use: it wrote a file nothing reads, and the socket still answers
        assert reference_calls(reference, [("system.ping", None)])[0][1]["result"] == "pong"
        return
    new = token_file.read_text().strip()
    assert new != ours.token

    def status_with(token: str) -> int:
        return ours.post({"jsonrpc": "2.0", "method": "system.ping", "id": 1},
                         headers={**ours.headers(), "Authorization": f"Bearer {token}"}).status_code

    # It only rewrites the file; ours notices a changed token file within a second.
    wait_for(lambda: status_with(new) == 200, 5, message="the rotated token accepted")
    assert status_with(ours.token) == 401


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_its_daemon_stop_stops_ours(subprocess_daemon, private_home, reference, transport):
    listen = ("--listen", "tcp://127.0.0.1:0") if transport == "tcp" else ()
    running = subprocess_daemon(*listen, data_dir=private_home / ".cheetahclaws")
    done = run([str(reference), "daemon", "stop"])
    assert done.returncode == 0 and "stopped" in done.stdout, done.stdout + done.stderr
    assert running.process.wait(10) == 0
    assert not (running.data_dir / "daemon.json").exists()


# -- its client code ------------------------------------------------------------------------
def test_its_rpc_helper_gets_what_it_asks_for(ours, reference, tmp_path):
    session = ours.rpc("session.create", {"runtime": "demo", "cwd": str(tmp_path)})["result"]["session_id"]
    replies = reference_calls(reference, [
        ("system.ping", None),
        ("system.ping", {"any": "thing"}),  # the reference ignores params here; so do we
        ("echo.ping", {"hello": "world"}),
        ("session.send", {"session_id": session, "text": "hello", "origin": "telegram"}),
        ("session.send", {"session_id": session, "text": "hello", "origin": 7}),
    ])
    assert all(ok for ok, _ in replies), replies
    results = [payload.get("result") for _, payload in replies]
    assert results[:2] == ["pong", "pong"]
    assert results[2]["pong"] is True and results[2]["echo"] == {"hello": "world"}
    assert results[3]["session_id"] == session and results[3]["turn_id"].startswith("turn_")
    # Accepted and ignored when it is a string; like the reference, anything else is refused.
    assert replies[4][1]["error"]["code"] == -32602 and replies[4][1]["error"]["data"]["field"] == "origin"


def test_the_references_namespaces_we_do_not_serve_say_so(ours, reference):
    examples = ["agent.start", "bridge.list", "monitor.subscribe", "proactive.get", "kernel.api.version_info",
                "session.reply", "session.list_recent"]
    replies = reference_calls(reference, [(method, {}) for method in examples + ["no.such.method"]])
    errors = [payload["error"] for ok, payload in replies]
    for method, error in zip(examples, errors):
        assert error["code"] == -32601 and error["data"]["method"] == method
        assert error["data"]["not_served"] in NOT_SERVED and method.startswith(error["data"]["not_served"].rstrip("*"))
        assert error["data"]["reason"].startswith("cc_daemon does not serve the reference's")
    assert {error["data"]["not_served"] for error in errors[:-1]} == set(NOT_SERVED)
    assert errors[-1]["code"] == -32601 and errors[-1]["data"] == {"method": "no.such.method"}


def test_its_spike_client_pings_requests_lists_and_answers(ours, reference):
    pong = spike(reference, ours, "ping", "--message", "hi")
    assert pong["status"] == 200 and pong["body"]["result"]["echo"] == {"hello": "hi"}
    created = spike(reference, ours, "request", "--tool", "Bash", "--input", '{"command": "ls"}')
    assert created["status"] == 200, created
    request_id = created["body"]["result"]["request_id"]
    pending = spike(reference, ours, "list")["body"]["result"]["pending"]
    assert [(p["request_id"], p["tool"], p["input"]) for p in pending] == [(request_id, "Bash", {"command": "ls"})]
    # Another kind is another client (its own id file): not the originator.
    intruder = spike(reference, ours, "--kind", "intruder", "answer", "--request-id", request_id, "--approve")
    assert intruder["status"] == 403 and intruder["body"]["error"]["code"] == -32001
    answered = spike(reference, ours, "answer", "--request-id", request_id, "--approve")
    assert answered["status"] == 200 and answered["body"]["result"]["answer"]["approve"] is True
    assert spike(reference, ours, "list")["body"]["result"]["pending"] == []
