"""The RPC load generator: raw-socket HTTP clients in several processes.

Owns: what a benchmark client sends and how it reads answers (``Target``, ``HttpConnection``
for one blocking connection, ``parse_response``), and the closed-loop RPC load: N
concurrent clients, each one request in flight on its own connection, spread over
several worker processes that each drive their connections from one ``selectors`` loop.

Must not: start or stop servers (``bench.servers``), decide what is good or bad
(``bench.report``). It uses no HTTP library: ``requests`` costs more CPU per call than
the servers under test, and the point is to measure them, not the client.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import selectors
import socket
import struct
import time
from array import array
from dataclasses import dataclass, replace
from typing import Any

API_VERSION_HEADER = "Cheetahclaws-Api-Version"
PING = b'{"jsonrpc":"2.0","id":1,"method":"system.ping"}'
#: What every answer to ``PING`` contains; anything else counts as an error.
PONG = b'"pong"'

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
_KEEP_ALIVE = re.compile(rb"\r\nconnection:[ \t]*keep-alive", re.IGNORECASE)
_CLIENT_ID = re.compile(rb"\r\nx-client-id:[ \t]*([0-9a-f]{32})", re.IGNORECASE)
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Target:
    """A server under test: where it listens and which headers its clients send."""

    name: str
    url: str  # tcp://HOST:PORT or unix:///abs/path
    token: str | None = None
    client_id: str | None = None
    #: Path that opens a live-only event stream (the reference replays everything without ``since``).
    events_path: str = "/events"

    @property
    def transport(self) -> str:
        return "unix" if self.url.startswith("unix://") else "tcp"

    @property
    def sockaddr(self) -> Any:
        if self.transport == "unix":
            return self.url[len("unix://"):]
        host, _, port = self.url[len("tcp://"):].rpartition(":")
        return host.strip("[]"), int(port)

    def connect(self, timeout: float = 5.0, rcvbuf: int | None = None) -> socket.socket:
        family = socket.AF_UNIX if self.transport == "unix" else (
            socket.AF_INET6 if ":" in self.sockaddr[0] else socket.AF_INET)
        sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the advertised window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        try:
            sock.connect(self.sockaddr)
        except OSError:
            sock.close()
            raise
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, method: str, path: str, body: bytes = b"", keep_alive: bool = True) -> bytes:
        """The full request bytes, built once and sent many times."""
        host = "localhost" if self.transport == "unix" else self.url[len("tcp://"):]
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"{API_VERSION_HEADER}: 0",
                 "X-Client-Kind: bench", "Accept: */*"]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        if self.client_id:
            lines.append(f"X-Client-Id: {self.client_id}")
        if method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def with_client_id(self) -> Target:
        """This target with the client id the server mints, as a well-behaved client resumes it."""
        with HttpConnection(self) as conn:
            response = conn.call(PING)
        match = _CLIENT_ID.search(response.head)
        return replace(self, client_id=match.group(1).decode()) if match else self


@dataclass
class Response:
    status: int
    head: bytes
    body: bytes
    close: bool


def parse_response(buf: bytearray) -> tuple[int, Response] | None:
    """The first complete response in ``buf`` and its length in bytes, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end + 2])
    status = int(head[9:12])
    match = _CONTENT_LENGTH.search(head)
    length = int(match.group(1)) if match else 0
    total = end + 4 + length
    if len(buf) < total:
        return None
    close = bool(_CONNECTION_CLOSE.search(head)) or (head.startswith(b"HTTP/1.0") and not _KEEP_ALIVE.search(head))
    return total, Response(status, head, bytes(buf[end + 4:total]), close)


class HttpConnection:
    """One blocking client connection that reconnects when the server closes it."""

    def __init__(self, target: Target, timeout: float = 10.0):
        self.target = target
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def call(self, body: bytes, path: str = "/rpc") -> Response:
        return self.send(self.target.request("POST", path, body))

    def send(self, request: bytes) -> Response:
        reused = self._sock is not None
        if self._sock is None:
            self._sock = self.target.connect(self.timeout)
            self._buf.clear()
        try:
            self._sock.sendall(request)
            response = self._read()
        except (ConnectionError, EOFError):
            self.close()
            if not reused:
                raise
            return self.send(request)  # the server dropped an idle keep-alive connection: once more
        if response.close:
            self.close()
        return response

    def _read(self) -> Response:
        while True:
            parsed = parse_response(self._buf)
            if parsed is not None:
                used, response = parsed
                del self._buf[:used]
                return response
            data = self._sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection before answering")
            self._buf += data

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> HttpConnection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- the closed-loop load ---------------------------------------------------------------
@dataclass
class RpcResult:
    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu_s: float
    server_cpu_s: float | None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        calls = max(self.calls, 1)
        out = {"calls_per_s": round(self.calls_per_s, 1), "calls": self.calls, "errors": self.errors,
               **latency_summary(self.latencies_ms, (50, 90, 99)),
               "client_cpu_us_per_call": round(self.client_cpu_s / calls * 1e6, 1)}
        if self.server_cpu_s is not None:
            out["server_cpu_us_per_call"] = round(self.server_cpu_s / calls * 1e6, 1)
        return out


def latency_summary(latencies_ms: list[float], percentiles: tuple[int, ...]) -> dict[str, float | None]:
    ordered = sorted(latencies_ms)
    return {f"p{p}_ms": round(ordered[min(len(ordered) - 1, len(ordered) * p // 100)], 3) if ordered else None
            for p in percentiles}


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal positive counts (fewer parts if total is small)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_rpc(target: Target, clients: int, keep_alive: bool, duration: float, warmup: float = 0.5,
            processes: int | None = None, server_pid: int | None = None, body: bytes = PING) -> RpcResult:
    """``clients`` concurrent callers for ``warmup + duration`` s; only the last ``duration`` counts."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.monotonic() + 0.3  # time for every worker to fork and connect
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    shares = spread(clients, processes or min(clients, os.cpu_count() or 2))
    workers = [context.Process(target=_rpc_worker, daemon=True,
                               args=(target, body, share, keep_alive, start_at, measure_from, stop_at, results))
               for share in shares]
    for worker in workers:
        worker.start()
    server_cpu = None
    if server_pid is not None:
        _sleep_until(measure_from)
        cpu_before = process_cpu_seconds(server_pid)
        _sleep_until(stop_at)
        server_cpu = process_cpu_seconds(server_pid) - cpu_before
    parts = [results.get(timeout=duration + warmup + 60) for _ in workers]
    for worker in workers:
        worker.join(10)
    latencies: list[float] = []
    for part in parts:
        latencies.extend(array("d", part["latencies"]))
    return RpcResult(calls=sum(p["calls"] for p in parts), errors=sum(p["errors"] for p in parts),
                     seconds=duration, latencies_ms=latencies,
                     client_cpu_s=sum(p["cpu_s"] for p in parts), server_cpu_s=server_cpu)


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class _Caller:
    """One closed-loop client: a connection with at most one request in flight."""

    __slots__ = ("sock", "buf", "started", "answered")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.started = 0.0
        self.answered = 0  # responses on this connection; a drop after one is a keep-alive race


def _rpc_worker(target: Target, body: bytes, connections: int, keep_alive: bool, start_at: float,
                measure_from: float, stop_at: float, results) -> None:
    request = target.request("POST", "/rpc", body, keep_alive)
    selector = selectors.DefaultSelector()
    latencies = array("d")
    stats = {"calls": 0, "errors": 0}

    def open_caller() -> _Caller:
        sock = target.connect()
        if not keep_alive and target.transport == "tcp":
            # Close with RST: tens of thousands of short connections would otherwise fill
            # the ephemeral port range with TIME_WAIT sockets.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.setblocking(False)
        caller = _Caller(sock)
        selector.register(sock, selectors.EVENT_READ, caller)
        return caller

    def send(caller: _Caller, started: float) -> None:
        caller.started = started
        caller.sock.send(request)  # a few hundred bytes into an empty socket buffer: never partial

    def replace_caller(caller: _Caller) -> _Caller:
        selector.unregister(caller.sock)
        caller.sock.close()
        return open_caller()

    callers = [open_caller() for _ in range(connections)]
    _sleep_until(start_at)
    now = time.monotonic()
    for caller in callers:
        send(caller, now)
    cpu_from = None
    while now < stop_at:
        if cpu_from is None and now >= measure_from:
            cpu_from = time.process_time()
        for key, _ in selector.select(min(stop_at - now, 0.05)):
            caller = key.data
            try:
                data = caller.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                started = caller.started
                if caller.answered == 0 or caller.buf:
                    stats["errors"] += 1
                    started = time.monotonic()
                send(replace_caller(caller), started)
                continue
            caller.buf += data
            parsed = parse_response(caller.buf)
            if parsed is None:
                continue
            used, response = parsed
            del caller.buf[:used]
            caller.answered += 1
            finished = time.monotonic()
            if caller.started >= measure_from and finished <= stop_at:
                if response.status == 200 and PONG in response.body:
                    stats["calls"] += 1
                    latencies.append((finished - caller.started) * 1000)
                else:
                    stats["errors"] += 1
            started = time.monotonic()  # before a reconnect, so a call's latency includes its connect
            if response.close or not keep_alive:
                caller = replace_caller(caller)
            send(caller, started)
        now = time.monotonic()
    cpu_s = time.process_time() - cpu_from if cpu_from is not None else 0.0
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    results.put({"calls": stats["calls"], "errors": stats["errors"], "latencies": latencies.tobytes(),
                 "cpu_s": cpu_s})
