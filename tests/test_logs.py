"""Logs (issue 16 item 4): text or JSON lines, one debug line per RPC call with its method,
duration and outcome, a request id on every line written while serving a request that also
comes back in X-Request-Id and in a -32603 error's data, and `daemon logs` filtered by level
and by request id, over the real CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import requests

from cc_daemon.rpc import object_schema
from helpers.daemons import cli, short_tmpdir

HEADERS = {"Cheetahclaws-Api-Version": "0"}
SECRET_PARAM = "do-not-log-me-4c1d"


def call(method: str, **params) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}


def log_lines(data_dir) -> list[str]:
    return (data_dir / "logs" / "daemon.log").read_text().splitlines()


def test_an_internal_error_and_its_log_lines_share_a_request_id(make_daemon):
    daemon = make_daemon("tcp", log_format="json", log_level="debug")

    def explode(call):
        raise RuntimeError("internal detail")

    daemon.daemon.registry.method("test.explode", summary="raises", result={}, params=object_schema({}))(explode)
    response = daemon.post(call("test.explode"))
    error = response.json()["error"]
    assert error["code"] == -32603 and error["data"]["request_id"] == response.headers["X-Request-Id"]
    request_id = error["data"]["request_id"]
    entries = [json.loads(line) for line in log_lines(daemon.data_dir)]  # every line is one JSON object
    mine = [entry for entry in entries if entry.get("request_id") == request_id]
    assert [entry["level"] for entry in mine] == ["error", "debug"]
    assert "internal detail" in mine[0]["exc"] and mine[0]["logger"] == "cc_daemon.rpc"
    assert re.fullmatch(r"rpc test\.explode \d+\.\d\d ms error -32603", mine[1]["msg"])
    assert all(set(entry) <= {"ts", "level", "logger", "msg", "request_id", "exc"} for entry in entries)


def test_each_call_is_logged_once_at_debug_without_its_params_or_the_token(make_daemon):
    daemon = make_daemon("tcp", log_level="debug")
    ids = []
    for method in ("system.ping", "permission.get", "no.such.method"):
        response = daemon.post(call(method, request_id=SECRET_PARAM))
        ids.append(response.headers["X-Request-Id"])
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{12}", request_id) for request_id in ids)
    text = "\n".join(log_lines(daemon.data_dir))
    rpc_lines = [line for line in text.splitlines() if " DEBUG cc_daemon.rpc " in line and ": rpc " in line]
    assert [re.sub(r" \d+\.\d\d ms ", " T ms ", line.split(" DEBUG ", 1)[1]) for line in rpc_lines] == [
        f"cc_daemon.rpc [req {ids[0]}]: rpc system.ping T ms ok",
        f"cc_daemon.rpc [req {ids[1]}]: rpc permission.get T ms error -32001",
        # The name of a method that does not exist is the client's text: it is not written.
        f"cc_daemon.rpc [req {ids[2]}]: rpc (unknown method) T ms error -32601"]
    assert SECRET_PARAM not in text and daemon.token not in text


def test_at_info_no_call_is_logged(make_daemon):
    daemon = make_daemon("tcp")
    daemon.post(call("system.ping"))
    assert not [line for line in log_lines(daemon.data_dir) if ": rpc " in line]


def test_daemon_logs_filters_by_level_and_request_over_the_cli():
    root = short_tmpdir()
    data_dir = root / "data"
    daemon = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(data_dir),
                               "--listen", "tcp://127.0.0.1:0", "--log-level", "debug", "--log-format", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = daemon.stdout.readline().split(" on ", 1)[1].split(" (pid")[0]
        token = (data_dir / "daemon_token").read_text().strip()
        base = address.replace("tcp://", "http://")
        headers = {**HEADERS, "Authorization": f"Bearer {token}"}
        first = requests.post(f"{base}/rpc", json=call("system.ping"), headers=headers, timeout=5)
        second = requests.post(f"{base}/rpc", json=call("system.version"), headers=headers, timeout=5)
        wanted = second.headers["X-Request-Id"]

        def logs(*extra: str) -> list[dict]:
            result = cli("daemon", "logs", "--data-dir", str(data_dir), *extra)
            assert result.returncode == 0, result.stderr
            return [json.loads(line) for line in result.stdout.splitlines()]

        # system.version finds the runtimes: those lines were written while serving it, so they are its.
        only = logs("--request-id", wanted)
        assert {entry["request_id"] for entry in only} == {wanted} and len(only) > 1
        assert only[-1]["msg"].startswith("rpc system.version ") and only[-1]["msg"].endswith(" ok")
        assert [entry["msg"][:16] for entry in logs("--request-id", first.headers["X-Request-Id"])] == ["rpc system.ping "]
        assert logs("--level", "info") and all(entry["level"] != "debug" for entry in logs("--level", "info"))
        assert any(entry["level"] == "debug" for entry in logs())
        assert logs("--level", "info", "-n", "1") == logs("--level", "info")[-1:]
        bad = cli("daemon", "logs", "--data-dir", str(data_dir), "--request-id", "not hex")
        assert bad.returncode == 2 and "hex digits" in bad.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    # The stderr of serve has the same lines in the same format.
    err = daemon.stderr.read().splitlines()
    assert err and all(json.loads(line)["level"] in ("debug", "info", "warning") for line in err)


def test_text_records_keep_their_traceback_under_a_filter(tmp_path):
    from cc_daemon.commands.daemon_logs import records

    lines = ["2026-12-04 01:02:03,456 INFO cc_daemon: started\n",
             "2026-12-04 01:02:04,000 ERROR cc_daemon.rpc [req 0a1b2c3d4e5f]: internal error in x (error_id=1)\n",
             "Traceback (most recent call last):\n", "  File \"x.py\", line 1\n", "RuntimeError: boom\n",
             "2026-12-04 01:02:05,000 DEBUG cc_daemon.rpc [req 0a1b2c3d4e5f]: rpc x 1.00 ms error -32603\n"]
    found = list(records(lines))
    assert [(r.level, r.request_id, len(r.lines)) for r in found] == [
        ("info", None, 1), ("error", "0a1b2c3d4e5f", 4), ("debug", "0a1b2c3d4e5f", 1)]
