"""Daemons under test and the means to talk to them like a user would.

Owns: starting daemons (in process, or as ``python -m cc_daemon serve`` subprocesses),
running the CLI next to ``sys.executable`` (never a name looked up on PATH), polling
with a deadline, and the ``Running`` handle the tests use. Fixtures live in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import requests
import requests_unixsocket

from cc_daemon import API_VERSION, API_VERSION_HEADER
from cc_daemon.client import Client, Endpoint
from cc_daemon.daemon import Daemon, DaemonOptions
from cc_daemon.storage import DataDir
from cc_daemon.transport.addresses import ListenAddress


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.01,
             message: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def short_tmpdir() -> Path:
    """A temp dir short enough for a Unix socket path (pytest's tmp_path can be too long)."""
    return Path(tempfile.mkdtemp(prefix="ccd-", dir="/tmp"))


class Running:
    """A daemon under test plus the means to talk to it like a user would."""

    def __init__(self, data_dir: Path, address: str, token: str | None, daemon: Daemon | None = None,
                 process: subprocess.Popen | None = None):
        self.data_dir = data_dir
        self.address = address
        self.token = token
        self.daemon = daemon
        self.process = process
        endpoint = Endpoint.from_address(address, token)
        self.base_url = endpoint.base_url
        self.http = requests_unixsocket.Session()

    @property
    def is_unix(self) -> bool:
        return self.address.startswith("unix://")

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {API_VERSION_HEADER: API_VERSION, "Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        return headers

    def post(self, body, headers: dict | None = None, raw: bool = False, **kwargs) -> requests.Response:
        data = body if raw else json.dumps(body)
        return self.http.post(self.base_url + "/rpc", data=data,
                              headers=headers if headers is not None else self.headers(), timeout=10, **kwargs)

    def get(self, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.http.get(self.base_url + path, headers=headers if headers is not None else self.headers(),
                             **kwargs)

    def rpc(self, method: str, params=None, client_id: str | None = None, **kwargs):
        message = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            message["params"] = params
        headers = self.headers(**({"X-Client-Id": client_id} if client_id else {}))
        return self.post(message, headers=headers, **kwargs).json()

    def client(self, kind: str = "test", **kwargs) -> Client:
        return Client(Endpoint.from_address(self.address, self.token), kind=kind, client_id=None, **kwargs)



def in_process(transport: str, root: Path | None = None, **option_overrides) -> Iterator[Running]:
    """A daemon in this process whose data dir is ``root`` (default: a new short temp dir)."""
    root = root or short_tmpdir()
    layout = DataDir(root)
    listen = (ListenAddress.unix(layout.default_socket) if transport == "unix"
              else ListenAddress.parse("tcp://127.0.0.1:0"))
    options = DaemonOptions(listen=listen, data_dir=layout, **option_overrides)
    daemon = Daemon(options)
    daemon.start()
    token = daemon.tokens.path.read_text().strip() if daemon.tokens else None
    running = Running(root, daemon.address.url(), token, daemon=daemon)
    try:
        yield running
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def cli(*args: str, env: dict | None = None, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (``python -m cc_daemon``)."""
    return subprocess.run([sys.executable, "-m", "cc_daemon", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kwargs)


class Drained:
    """A daemon's stderr read as it comes: a pipe nobody reads fills at 64 KB and then blocks
    the daemon's next log line (a debug log writes one per call). ``read`` waits for the end."""

    def __init__(self, stream):
        self._stream = stream
        self._chunks: list[str] = []
        self._thread = threading.Thread(target=self._drain, name="stderr-drain", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for line in self._stream:
            self._chunks.append(line)

    def read(self) -> str:
        self._thread.join(30)
        return "".join(self._chunks)

    def so_far(self) -> str:
        """What it wrote until now, for a message about a daemon that is still running."""
        return "".join(list(self._chunks))

    def close(self) -> None:
        self._thread.join(5)
        self._stream.close()


def spawn_daemon(data_dir: Path, *extra: str) -> tuple[subprocess.Popen, dict]:
    """Start ``serve`` as a subprocess and wait until it answers; returns (process, discovery).
    Its stderr is drained all along (``Drained``); read it once the process has ended."""
    process = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(data_dir), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stderr = Drained(process.stderr)
    discovery = DataDir(data_dir).discovery_file

    def ready():
        if process.poll() is not None:
            raise AssertionError(f"daemon exited {process.returncode}: {process.stderr.read()}")
        try:
            info = json.loads(discovery.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == process.pid else None  # not a stale file from a dead run

    info = wait_for(ready, 20, message="daemon discovery file")
    return process, info


