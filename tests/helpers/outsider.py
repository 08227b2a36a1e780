"""Requests as another local process or a web page makes them, and what the audit log kept.

Owns: one HTTP request on a fresh TCP connection from a chosen loopback source address
(``127.x.y.z``: every local process may bind any of them) with chosen credentials, through
``http.client`` so that nothing is added or fixed up the way a client library would; a
flood of such refusals from many threads; and reading every audit file a daemon wrote.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cc_daemon import API_VERSION, API_VERSION_HEADER

PING = '{"jsonrpc":"2.0","method":"system.ping","id":1}'


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def target(running) -> tuple[str, int]:
    host, port = running.address[len("tcp://"):].rsplit(":", 1)
    return host, int(port)


def send(running, token: str | None, *, source: str = "127.0.0.1", path: str = "/rpc",
         headers: dict[str, str] | None = None, versioned: bool = True) -> Answer:
    """One request on a new connection from ``source``: a ping on /rpc, a GET elsewhere.

    ``versioned=False`` leaves out the API version header, as an ``<img>`` load does."""
    connection = http.client.HTTPConnection(*target(running), timeout=10, source_address=(source, 0))
    sent = {API_VERSION_HEADER: API_VERSION} if versioned else {}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    try:
        if path == "/rpc":
            connection.request("POST", path, body=PING, headers={**sent, "Content-Type": "application/json"})
        else:
            connection.request("GET", path, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def flood(running, threads: int, requests_each: int, headers_of) -> Counter:
    """``threads`` threads, each sending ``requests_each`` refused GETs on one keep-alive
    connection (``headers_of(thread, n)`` says with what); returns the statuses seen."""
    seen: Counter = Counter()
    lock = threading.Lock()

    def run(thread: int) -> None:
        connection = http.client.HTTPConnection(*target(running), timeout=30)
        mine: Counter = Counter()
        try:
            for n in range(requests_each):
                connection.request("GET", "/healthz", headers=headers_of(thread, n))
                response = connection.getresponse()
                response.read()
                mine[response.status] += 1
                if response.will_close:
                    connection.close()
        finally:
            connection.close()
            with lock:
                seen.update(mine)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return seen


def audit_files(data_dir: Path) -> list[Path]:
    """``auth.jsonl`` and the files rotation made of it, oldest first."""
    logs = Path(data_dir) / "logs"
    rotated = sorted(logs.glob("auth.jsonl.*"), key=lambda path: -int(path.suffix[1:]))
    current = logs / "auth.jsonl"
    return rotated + ([current] if current.exists() else [])


def audit_lines(data_dir: Path) -> list[dict]:
    """Every line of every audit file, oldest first, each parsed (a torn line fails here)."""
    lines = []
    for path in audit_files(data_dir):
        data = path.read_bytes()
        assert b"\0" not in data, f"NUL bytes in {path}"
        assert not data or data.endswith(b"\n"), f"{path} ends in a torn line"
        lines.extend(json.loads(line) for line in data.decode("utf-8").splitlines())
    return lines


def decisions(lines: list[dict], outcome: str | None = None) -> int:
    """How many decisions the lines stand for: one each, or an aggregate line's ``count``."""
    return sum(line.get("count", 1) for line in lines if outcome is None or line["outcome"] == outcome)
