"""The HTTP layer: status codes, JSON error bodies, versions, hardening against bad clients."""

from __future__ import annotations

import json
import socket
import time

import pytest

from cc_daemon import __version__
from cc_daemon.transport.guards import Refuser
from cc_daemon.transport.servers import Limits
from helpers.daemons import wait_for


def raw_connect(daemon) -> socket.socket:
    if daemon.is_unix:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(daemon.address[len("unix://"):])
    else:
        host, port = daemon.address[len("tcp://"):].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def auth_head(daemon) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in daemon.headers().items() if k != "Content-Type")


def still_serving(daemon) -> bool:
    return daemon.rpc("system.ping")["result"] == "pong"


def test_version_header_missing_or_wrong_is_426(daemon):
    for value in (None, "1", ""):
        headers = daemon.headers()
        headers.pop("Cheetahclaws-Api-Version")
        if value is not None:
            headers["Cheetahclaws-Api-Version"] = value
        response = daemon.post({"jsonrpc": "2.0", "method": "system.ping", "id": 1}, headers=headers)
        assert response.status_code == 426
        assert response.json() == {"error": "api_version_mismatch", "expected": "0", "got": value,
                                   "header": "Cheetahclaws-Api-Version"}
        assert response.headers["Cheetahclaws-Api-Version"] == "0"
        assert "Upgrade" in response.headers
        assert daemon.get("/events", headers=headers).status_code == 426


#: What Prometheus 2.x/3.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.6,application/openmetrics-text;"
                     "version=0.0.1;q=0.5,text/plain;version=1.0.0;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


def test_health_endpoints(daemon):
    ready = daemon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    daemon.rpc("system.ping")
    metrics = daemon.get("/metrics", headers=daemon.headers(Accept="text/plain"))
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'ccd_rpc_calls_total{method="system.ping",outcome="ok"}' in metrics.text
    assert "ccd_uptime_seconds" in metrics.text


def test_healthz_and_json_metrics_carry_the_references_fields_with_honest_values(daemon, tmp_path):
    health = daemon.get("/healthz").json()
    assert health == {"status": "ok", "version": __version__, "uptime_s": health["uptime_s"], "model": None,
                      "active_sessions": 0}
    assert isinstance(health["uptime_s"], float) and health["uptime_s"] >= 0
    summary = daemon.get("/metrics").json()
    # Nothing the daemon does not know is given as a number: no model of its own, no
    # circuit breakers, no per-day usage sum (yet).
    assert summary == {"uptime_s": summary["uptime_s"], "model": None, "active_sessions": 0, "circuits": {},
                       "daily_tokens": None, "daily_cost_usd": None}
    assert summary["uptime_s"] >= health["uptime_s"]

    session = daemon.rpc("session.create", {"runtime": "demo", "cwd": str(tmp_path)})["result"]["session_id"]
    assert daemon.get("/healthz").json()["active_sessions"] == 1
    assert daemon.get("/metrics").json()["active_sessions"] == 1
    assert "\nccd_sessions_active 1\n" in daemon.get("/metrics", headers=daemon.headers(Accept="text/plain")).text
    daemon.rpc("session.close", {"session_id": session})
    assert daemon.get("/healthz").json()["active_sessions"] == 0


@pytest.mark.parametrize("accept, exposition", [
    (None, False), ("*/*", False), ("application/json", False), ("text/html,*/*;q=0.8", False),
    ("text/plain", True), ("text/plain; version=0.0.4", True), ("application/openmetrics-text", True),
    (PROMETHEUS_ACCEPT, True), ("application/json;q=0.9, text/plain;q=0.5", False),
    ("text/plain;q=0.2, application/json;q=0.1", True), ("text/plain;q=0", False), ("text/plain;q=x", False),
])
def test_metrics_answer_json_or_the_exposition_format_as_accept_prefers(tcp_daemon, accept, exposition):
    response = tcp_daemon.get("/metrics", headers=tcp_daemon.headers(Accept=accept))
    assert response.status_code == 200 and response.headers["Vary"] == "Accept"
    if exposition:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# TYPE ccd_uptime_seconds gauge" in response.text
    else:
        assert response.headers["Content-Type"] == "application/json"
        assert set(response.json()) == {"uptime_s", "model", "active_sessions", "circuits", "daily_tokens",
                                        "daily_cost_usd"}


def test_unknown_path_404_and_wrong_method_405(daemon):
    response = daemon.get("/nope")
    assert response.status_code == 404 and response.json() == {"error": "not found"}
    response = daemon.get("/rpc")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    response = daemon.http.delete(daemon.base_url + "/events", headers=daemon.headers())
    assert response.status_code == 405 and response.json()["error"] == "method not allowed"


def test_body_over_limit_is_413_json(make_daemon):
    daemon = make_daemon("tcp", limits=Limits(max_body_bytes=1000))
    response = daemon.post(b"x" * 5000, raw=True)
    assert response.status_code == 413
    assert response.json() == {"error": "payload too large", "limit_bytes": 1000}
    assert still_serving(daemon)


def test_huge_declared_body_is_refused_without_reading_it(daemon):
    sock = raw_connect(daemon)
    sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}"
                 f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode())
    status, headers, body = read_response(sock)
    assert status == 413 and json.loads(body)["error"] == "payload too large"
    assert headers.get("connection") == "close"
    sock.close()


@pytest.mark.parametrize("length", ["abc", "-5", "+5", "1_0", "0x10", "9" * 30])
def test_bad_content_length_is_400_json(daemon, length):
    sock = raw_connect(daemon)
    sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}Content-Length: {length}\r\n\r\n"
                 .encode())
    status, _, body = read_response(sock)
    assert status == 400 and json.loads(body)["error"] == "bad request"
    sock.close()
    assert still_serving(daemon)


PING = b'{"jsonrpc":"2.0","method":"system.ping","id":1}'


@pytest.mark.parametrize("framing", [
    f"Content-Length: 5\r\nContent-Length: {len(PING)}\r\n",           # conflicting lines
    f"Content-Length: {len(PING)}, 5\r\n",                                # conflicting list
    f"Content-Length: {len(PING)}\r\nTransfer-Encoding: chunked\r\n",   # both framings
    "Transfer-Encoding: gzip\r\n",                                       # one we cannot frame
], ids=["two-lines", "one-list", "length-and-chunked", "gzip"])
def test_ambiguous_body_framing_is_400_and_closes(daemon, framing):
    """RFC 9112 6.1 and 6.3: a request whose body length two readers could disagree on is a
    smuggling hazard; it is refused, not resolved by picking one of its values."""
    sock = raw_connect(daemon)
    sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}{framing}\r\n".encode() + PING)
    status, headers, body = read_response(sock)
    assert status == 400 and json.loads(body)["error"] == "bad request", body
    assert headers.get("connection") == "close"
    sock.close()
    assert still_serving(daemon)


def test_repeated_equal_content_lengths_are_one_length(daemon):
    sock = raw_connect(daemon)
    sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}Content-Length: {len(PING)}\r\n"
                 f"Content-Length: {len(PING)}\r\n\r\n".encode() + PING)
    status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["result"] == "pong"
    sock.close()


def test_chunked_request_body(daemon):
    def chunks():
        yield b'{"jsonrpc":"2.0",'
        yield b'"method":"system.ping","id":9}'

    response = daemon.http.post(daemon.base_url + "/rpc", data=chunks(), headers=daemon.headers(), timeout=10)
    assert response.json() == {"jsonrpc": "2.0", "result": "pong", "id": 9}


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"HELLO WORLD HTTP/9.9\r\n\r\n",
                                     b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n"])
def test_garbage_gets_a_json_4xx_and_daemon_survives(daemon, garbage):
    sock = raw_connect(daemon)
    sock.sendall(garbage)
    status, headers, body = read_response(sock)
    assert 400 <= status < 600 and status != 500
    assert isinstance(json.loads(body), dict)
    sock.close()
    assert still_serving(daemon)


def test_early_disconnect_and_broken_pipe(daemon):
    for _ in range(20):
        sock = raw_connect(daemon)
        sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}Content-Length: 100\r\n\r\n{{"
                     .encode())
        sock.close()
        sock = raw_connect(daemon)
        sock.sendall(f"GET /events?since=0 HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}\r\n".encode())
        sock.close()
    assert still_serving(daemon)


def test_half_sent_request_is_cut_off_at_the_deadline(make_daemon):
    daemon = make_daemon("tcp", limits=Limits(request_timeout_s=0.5))
    sock = raw_connect(daemon)
    sock.sendall(b"POST /rpc HTTP/1.1\r\nHost: local")
    started = time.monotonic()
    # Keep trickling bytes: per-recv timeouts alone would never fire.
    closed = False
    while time.monotonic() - started < 5:
        try:
            sock.sendall(b"h")
            time.sleep(0.05)
        except OSError:
            closed = True
            break
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                closed = True
                break
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
    assert closed, "a trickling client must be cut off"
    assert time.monotonic() - started < 3
    assert still_serving(daemon)


def test_connection_cap_answers_503_with_retry_after(make_daemon):
    daemon = make_daemon("tcp", limits=Limits(max_connections=3))
    held = [raw_connect(daemon) for _ in range(3)]
    for sock in held:  # make sure each is being served (a request in flight keeps it open)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}\r\n".encode())
        assert read_response(sock)[0] == 200
    extra = raw_connect(daemon)
    status, headers, body = read_response(extra)
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body) == {"error": "too many connections"}
    for sock in held:
        sock.close()
    wait_for(lambda: still_serving(daemon), message="capacity back")


def test_over_the_cap_each_new_client_is_answered_at_once_while_others_linger(make_daemon):
    daemon = make_daemon("tcp", limits=Limits(max_connections=2))
    held = [raw_connect(daemon) for _ in range(2)]
    for sock in held:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}\r\n".encode())
        assert read_response(sock)[0] == 200
    idle = [raw_connect(daemon) for _ in range(30)]  # refused, and they neither read nor close
    for attempt in range(3):
        started = time.monotonic()
        status, headers, _ = read_response(raw_connect(daemon))
        assert status == 503 and headers["retry-after"] == "1"
        assert time.monotonic() - started < 0.4, f"attempt {attempt} waited for the idle ones"
    for sock in idle + held:
        sock.close()


def read_to_end(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def refuser_closed(peer: socket.socket, within: float) -> bool:
    """True once the refuser closed its end within ``within`` s: writing to it fails then
    (while it lingers, what the peer writes is read and dropped)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            peer.send(b"x")
        except (BrokenPipeError, ConnectionResetError):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def refuser():
    refuser = Refuser()
    yield refuser
    refuser.stop()


def test_refuser_answers_then_closes_when_the_peer_closes_or_the_linger_ends(refuser, monkeypatch):
    monkeypatch.setattr(Refuser, "LINGER_S", 60.0)
    polite, ours = socket.socketpair()
    polite.sendall(b"GET / HTTP/1.1\r\n\r\n")  # input the refuser must read before closing
    refuser.refuse(ours)
    assert read_to_end(polite) == Refuser.RESPONSE  # its write side is shut after the answer
    polite.shutdown(socket.SHUT_WR)
    assert refuser_closed(polite, 2)
    monkeypatch.setattr(Refuser, "LINGER_S", 0.3)
    silent, ours = socket.socketpair()
    started = time.monotonic()
    refuser.refuse(ours)
    assert read_to_end(silent) == Refuser.RESPONSE
    assert refuser_closed(silent, 3)  # it never closes its side: the linger ends
    assert time.monotonic() - started > 0.25


def test_refuser_keeps_a_bounded_number_lingering_and_closes_the_oldest(refuser, monkeypatch):
    monkeypatch.setattr(Refuser, "LINGER_S", 60.0)
    monkeypatch.setattr(Refuser, "MAX_LINGERING", 4)
    peers = []
    for _ in range(10):
        peer, ours = socket.socketpair()
        refuser.refuse(ours)
        peers.append(peer)
    assert all(read_to_end(peer) == Refuser.RESPONSE for peer in peers)
    assert all(refuser_closed(peer, 2) for peer in peers[:6])
    assert not any(refuser_closed(peer, 0.2) for peer in peers[6:])
    refuser.stop()  # closes whatever still lingers
    assert all(refuser_closed(peer, 2) for peer in peers[6:])


def test_refuser_sends_an_answer_the_socket_could_not_take_at_once(refuser):
    peer, ours = socket.socketpair()
    ours.setblocking(False)
    backlog = 0
    while True:  # fill the connection so that the answer has to wait for the peer to read
        try:
            backlog += ours.send(b"x" * 65536)
        except BlockingIOError:
            break
    refuser.refuse(ours)
    data = read_to_end(peer)
    assert data[backlog:] == Refuser.RESPONSE and data[:backlog] == b"x" * backlog


def test_keep_alive_survives_an_error_response(daemon):
    sock = raw_connect(daemon)
    for i in range(3):
        body = b'{"jsonrpc":"2.0","method":"nope","id":1}' if i % 2 else b"{bad json"
        sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}Content-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        status, headers, payload = read_response(sock)
        assert status == 200 and "error" in json.loads(payload)
    sock.close()


def test_refused_request_with_unread_body_does_not_poison_keep_alive(daemon):
    sock = raw_connect(daemon)
    body = b'{"jsonrpc":"2.0","method":"system.ping","id":1}'
    sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    status, headers, _ = read_response(sock)
    assert status in (401, 426)
    assert headers.get("connection") == "close"
    sock.close()


# -- HTTP/1.0 clients ----------------------------------------------------------------------
RPC_PING = b'{"jsonrpc":"2.0","method":"system.ping","id":1}'


def test_an_http_1_0_call_gets_an_http_1_0_answer_and_the_connection_closes(daemon):
    """A client that reads to the end of the connection (the reference's habit) gets its
    answer at once, not after a keep-alive timeout."""
    with raw_connect(daemon) as sock:
        sock.sendall(f"POST /rpc HTTP/1.0\r\n{auth_head(daemon)}Content-Length: {len(RPC_PING)}\r\n\r\n".encode()
                     + RPC_PING)
        started = time.monotonic()
        data = read_to_end(sock)
        assert time.monotonic() - started < 2
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and b"Connection: close" in head
    assert json.loads(body) == {"jsonrpc": "2.0", "result": "pong", "id": 1}


def test_an_http_1_1_call_is_kept_alive_and_chunked_streams_stay(daemon):
    with raw_connect(daemon) as sock:
        sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}"
                     f"Content-Length: {len(RPC_PING)}\r\n\r\n".encode() + RPC_PING)
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection") != "close"
        sock.sendall(f"GET /events?since=0 HTTP/1.1\r\nHost: localhost\r\n{auth_head(daemon)}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in data


def test_an_http_1_0_event_stream_is_raw_sse_text_delimited_by_the_close(daemon):
    """Read line by line without decoding chunks, as the reference's watch client does:
    every line is an SSE field or a blank line, never a chunk size."""
    with raw_connect(daemon) as sock:
        sock.sendall(f"GET /events?since=0 HTTP/1.0\r\n{auth_head(daemon)}\r\n".encode())
        daemon.rpc("echo.ping", {"n": 1})
        data = b""
        while b"ping_received" not in data:
            data += sock.recv(65536)
        while not data.endswith(b"\n\n"):
            data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and b"Transfer-Encoding" not in head and b"Connection: close" in head
    for line in body.decode().split("\n"):
        assert line == "" or line.split(":", 1)[0] in ("retry", "id", "event", "data"), line
