"""Reading the daemon's event stream in tests: a parsed stream, a raw stalled reader, checks.

Owns: the small SSE helpers several test modules share (publish a burst of events, read a
stream as sseclient-py does or byte by byte from a raw socket, check ids have no silent
hole).
"""

from __future__ import annotations

import json
import socket

import sseclient


def open_stream(daemon, query: str = "", headers: dict | None = None):
    response = daemon.get("/events" + query, headers={**daemon.headers(), **(headers or {})}, stream=True,
                          timeout=(5, 10))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response, sseclient.SSEClient(response.iter_content(chunk_size=None)).events()


def publish(daemon, n: int, **params) -> None:
    batch = [{"jsonrpc": "2.0", "method": "echo.ping", "params": {"n": i, **params}, "id": i} for i in range(n)]
    for i in range(0, n, 100):
        assert daemon.post(batch[i:i + 100]).status_code == 200


def take(events, count: int) -> list[dict]:
    out = []
    for sse in events:
        out.append({"sse": sse, **json.loads(sse.data)})
        if len(out) == count:
            return out
    raise AssertionError("stream ended early")


def stalled_reader(daemon) -> socket.socket:
    """A raw connection that asks for the whole stream and then does not read it."""
    host, port = daemon.address[len("tcp://"):].rsplit(":", 1)
    lazy = socket.socket()
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    lazy.connect((host, int(port)))
    head = "".join(f"{k}: {v}\r\n" for k, v in daemon.headers().items())
    lazy.sendall(f"GET /events?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    return lazy


def read_until_event(sock: socket.socket, last_n: int) -> list[dict]:
    """Read a raw stream until the ping with params n == last_n; returns every event seen."""
    sock.settimeout(5)
    buffer, marker = b"", f'"n":{last_n},'.encode()
    while marker not in buffer or b"\n\n" not in buffer[buffer.index(marker):]:  # up to the end of that frame
        chunk = sock.recv(1 << 20)
        assert chunk, "stream closed"
        buffer += chunk
    return [json.loads(line[6:]) for line in buffer.decode(errors="replace").splitlines()
            if line.startswith("data: ")]


def check_exact(events: list[dict], last_id: int) -> bool:
    """Ids increase one by one, and every hole is announced by a gap naming it; True if a gap came."""
    expected, gapped = 1, False
    for event in events:
        if event["type"] == "gap":
            assert event["data"]["missed_from"] == expected
            expected, gapped = event["data"]["missed_to"] + 1, True
        else:
            assert event["id"] == expected
            expected += 1
    assert expected == last_id + 1
    return gapped
