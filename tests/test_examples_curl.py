"""examples/curl.sh runs as documented against a real daemon on each transport.

The script is the user-facing proof that plain curl can drive the daemon; these tests run
it unmodified and check what it printed for every endpoint, so a change to the wire
contract that breaks curl users breaks here too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.daemons import short_tmpdir

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "curl.sh"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None,
                                reason="examples/curl.sh needs curl and bash")


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def sections(output: str) -> dict[str, str]:
    """The script's output split at its ``== N. title ==`` headings, keyed by N."""
    parts = re.split(r"^== (\S+?)\.? .*==$", output, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_endpoint_over_both_transports(daemon):
    result = run_script("--data-dir", str(daemon.data_dir))
    assert result.returncode == 0, result.stderr + result.stdout
    out = sections(result.stdout)

    assert '{"status":"ok"' in out["2"] and '"ready":true' in out["2"]
    assert "# TYPE ccd_" in out["2"]

    client_id = re.search(r"^X-Client-Id: ([0-9a-f]{32})$", out["3"], re.MULTILINE | re.IGNORECASE).group(1)
    assert '{"jsonrpc":"2.0","result":"pong","id":1}' in out["3"]
    transport = "unix" if daemon.is_unix else "tcp"
    assert f'"transport":"{transport}"' in out["3b"]
    assert 'method "rpc.discover"' in out["3b"] and 'method "permission.answer"' in out["3b"]
    assert '"result":{"pong":true' in out["3c"]

    assert out["4"].strip().endswith("[HTTP 204]") and '"jsonrpc"' not in out["4"].split("\n", 2)[-1]
    batch_reply = out["5"].strip().splitlines()[-2]
    assert batch_reply.startswith('[{"jsonrpc":"2.0","result":"pong","id":1},')
    assert '"code":-32601' in batch_reply and '"id":"b"' in batch_reply and '"id":null}]' in batch_reply
    assert batch_reply.count('"jsonrpc"') == 3  # the batched notification got no entry
    assert out["5b"].strip().endswith("[HTTP 204]")

    for code in ("-32601", "-32602", "-32700", "-32600"):
        assert f'"code":{code}' in out["6"]
    assert '"field":"result"' in out["6"]
    for status, body in (("426", '"error":"api_version_mismatch"'), ("404", '"error":"not found"'),
                         ("405", '"error":"method not allowed"')):
        assert body in out["6b"] and f"[HTTP {status}]" in out["6b"]

    permissions = out["7"]
    assert '"code":-32001' in permissions and "[HTTP 403]" in permissions
    assert '"answer":{"approve":true,"reason":"fine"}' in permissions
    assert '"state":"answered"' in permissions and '"code":-32002' in permissions

    live = out["8"].split("-- what curl -N printed:")[1].lstrip()
    assert live.startswith("retry: ")
    frames = re.findall(r"^id: (\d+)\nevent: ping_received\ndata: (.*)$", live, re.MULTILINE)
    assert [('"step":"live-1"' in data, '"step":"live-2"' in data) for _, data in frames] == \
        [(True, False), (False, True)]
    # The stream was opened with our client id: our own events name us, to us only.
    assert all(f'"client_id":"{client_id}"' in data for _, data in frames)

    assert '"step":"live-1"' in out["9"] and '"step":"live-2"' in out["9"]
    assert '"client_id"' not in out["9"]
    assert '"step":"live-2"' in out["9b"] and '"step":"live-1"' not in out["9b"]
    assert f"over {transport}" in result.stdout.splitlines()[-1]

    if daemon.token:
        assert daemon.token not in result.stdout + result.stderr


def test_fails_clearly_without_a_daemon():
    empty = short_tmpdir()
    try:
        result = run_script(env={"CHEETAHCLAWS_HOME": str(empty)})
        assert result.returncode == 1
        assert f"no daemon runs for {empty}" in result.stderr

        (empty / "daemon.json").write_text('{\n  "url": "unix://%s/gone.sock"\n}\n' % empty)
        result = run_script("--data-dir", str(empty))
        assert result.returncode == 1
        assert "no daemon answers there" in result.stderr
    finally:
        shutil.rmtree(empty, ignore_errors=True)
