"""Event-stream measurements: fan-out to many subscribers, a paused reader, idle streams.

Owns: opening ``GET /events`` streams over raw sockets, reading SSE frames (HTTP/1.1
chunked from cc_daemon, close-delimited HTTP/1.0 from the reference), checking every
subscriber got every event exactly once and in order (ids, plus ``gap`` events that
account for holes exactly), publish-to-receive latency, and the publisher that calls
``echo.ping`` back to back.

Must not: start servers or judge results. Subscribers run in worker processes so that
parsing tens of thousands of frames a second is not done by the publisher's process, and
they parse only once the publisher stopped (``_subscriber_worker``).

Latency is ``receive time - event ts``: the event's ``ts`` is stamped by the server when
it publishes, and every process here shares the machine's clock. The receive time is the
kernel's arrival stamp (``SO_TIMESTAMPNS``) of the last segment of the read that completed
the frame, so never earlier than the frame's true arrival; where the kernel gives no stamp,
the time of the read. ``read_p50_ms`` / ``read_p99_ms`` take the time of the read instead,
which adds how long a worker, reading its streams one after the other on a shared CPU,
took to get to that stream: the load generator's delay, not the server's.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import selectors
import socket
import struct
import sys
import time
from array import array
from dataclasses import dataclass
from typing import Any

from .loadgen import HttpConnection, Target, latency_summary, process_cpu_seconds, spread

EVENT_TYPE = b"ping_received"
_FRAME = re.compile(rb'id: (\d+)\nevent: ([^\n]*)\ndata: (\{"id":-?\d+,"ts":([-0-9.eE+]+)[^\n]*)\n\n')
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
#: After the publisher stops, a subscriber that received nothing new for this long is done.
DRAIN_IDLE_S = 3.0
#: Linux's SO_TIMESTAMPNS, which the socket module does not name: its value in the generic
#: ABI (x86, arm, riscv); alpha, mips, parisc and sparc number it differently.
SO_TIMESTAMPNS = 35
KERNEL_STAMPS = sys.platform == "linux" and platform.machine() in (
    "x86_64", "i686", "aarch64", "armv7l", "riscv64")
#: The ``struct timespec`` (seconds, nanoseconds: two C longs) of the stamp, and the room
#: for the one control message that carries it.
TIMESPEC = struct.Struct("@ll")
STAMP_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
READ_BYTES = 262144


class StreamRefused(RuntimeError):
    """The server did not answer ``GET /events`` with 200."""


def open_stream(target: Target, rcvbuf: int | None = None, timeout: float = 10.0) -> tuple[socket.socket, bool, bytes]:
    """Connect, ask for the live event stream, read the response head.

    Returns (socket, chunked, bytes already read past the head).
    """
    sock = target.connect(timeout, rcvbuf=rcvbuf)
    sock.sendall(target.request("GET", target.events_path))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            sock.close()
            raise StreamRefused(f"{target.name} closed the event stream before answering")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    if head[9:12] != b"200":
        sock.close()
        raise StreamRefused(f"{target.name} answered GET {target.events_path} with {head[:12].decode()!r}")
    return sock, bool(_CHUNKED.search(head + b"\r\n")), rest


def stamp_arrivals(sock: socket.socket) -> None:
    """Ask the kernel to stamp every segment ``sock`` receives with its arrival time."""
    if KERNEL_STAMPS:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def receive(sock: socket.socket) -> tuple[bytes, float, float]:
    """What ``sock`` holds now, the kernel's arrival stamp of its last segment, and the time
    read (the stamp is the read time when the kernel gave none)."""
    if not KERNEL_STAMPS:
        data = sock.recv(READ_BYTES)
        now = time.time()
        return data, now, now
    data, control, _, _ = sock.recvmsg(READ_BYTES, STAMP_SPACE)
    now = time.time()
    for level, kind, value in control:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack_from(value)
            return data, seconds + nanoseconds * 1e-9, now
    return data, now, now


class StreamReader:
    """One subscriber's view: de-chunks, splits frames, checks ids, records latencies
    (``latencies`` from the arrival stamp, ``read_latencies`` from the read time)."""

    def __init__(self, sock: socket.socket, chunked: bool, leftover: bytes, latencies: array,
                 read_latencies: array):
        self.sock = sock
        self.chunked = chunked
        self.raw = bytearray()
        self.text = bytearray()
        self.latencies = latencies
        self.read_latencies = read_latencies
        self.seen: set[int] = set()
        self.last_id = 0
        self.duplicates = 0
        self.reordered = 0
        self.gap_covered = 0
        self.gaps = 0
        self.last_receive = 0.0
        #: Reads not parsed yet, with their times: (data, arrived, read).
        self.kept: list[tuple[bytes, float, float]] | None = None
        now = time.time()
        self.feed(leftover, now, now)

    @property
    def accounted(self) -> int:
        """Events received or reported missing by an exact gap."""
        return len(self.seen) + self.gap_covered

    def keep(self) -> None:
        """Parse nothing until ``parse_kept``: reads are only kept, with their times."""
        self.kept = []

    def parse_kept(self) -> None:
        """Parse what was kept, and every later read as it comes."""
        kept, self.kept = self.kept or [], None
        for data, arrived, now in kept:
            self.feed(data, arrived, now)

    def receive(self, data: bytes, arrived: float, now: float) -> None:
        if self.kept is not None:
            self.kept.append((data, arrived, now))
        else:
            self.feed(data, arrived, now)

    def feed(self, data: bytes, arrived: float, now: float) -> None:
        if self.chunked:
            self.raw += data
            self._dechunk()
        else:
            self.text += data
        end = self.text.rfind(b"\n\n")
        if end < 0:
            return
        block = bytes(self.text[:end + 2])
        del self.text[:end + 2]
        self.last_receive = now
        for match in _FRAME.finditer(block):
            self._event(int(match[1]), match[2], match, arrived, now)

    def _dechunk(self) -> None:
        raw, pos = self.raw, 0
        while True:
            line_end = raw.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(raw[pos:line_end].split(b";")[0], 16)
            data_end = line_end + 2 + size
            if len(raw) < data_end + 2:
                break
            self.text += raw[line_end + 2:data_end]
            pos = data_end + 2
        del raw[:pos]

    def _event(self, event_id: int, event_type: bytes, match: re.Match, arrived: float, now: float) -> None:
        if event_type == b"gap":
            data = json.loads(match[3])["data"]
            self.gaps += 1
            self.gap_covered += data["missed_to"] - data["missed_from"] + 1
            self.last_id = max(self.last_id, data["missed_to"])
            return
        if event_type != EVENT_TYPE:
            return
        published = float(match[4])
        self.latencies.append((arrived - published) * 1000)
        self.read_latencies.append((now - published) * 1000)
        if event_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(event_id)
        if event_id < self.last_id:
            self.reordered += 1
        else:
            self.last_id = event_id

    def summary(self) -> dict[str, Any]:
        return {"distinct": len(self.seen), "duplicates": self.duplicates, "reordered": self.reordered,
                "gaps": self.gaps, "gap_covered": self.gap_covered, "last_receive": self.last_receive}


def _subscriber_worker(target: Target, count: int, rcvbuf: int | None, ready, resume, stop, expected,
                       results) -> None:
    """Hold ``count`` streams; read them (after ``resume``) until every one has ``expected``
    events accounted for, or nothing arrived for ``DRAIN_IDLE_S`` after ``stop``.

    While the publisher runs, reads are only kept in memory (with their times) and parsed
    once it stopped: on two cores, parsing 60,000 frames a second in the measured window
    took CPU the server was writing with (each write woke a worker that parsed before the
    server's writing thread got the CPU back), and that added to the latency measured.
    """
    latencies, read_latencies = array("d"), array("d")
    try:
        readers = [StreamReader(*open_stream(target, rcvbuf), latencies, read_latencies) for _ in range(count)]
    except (OSError, StreamRefused) as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        return
    for reader in readers:
        stamp_arrivals(reader.sock)
        reader.keep()
    ready.put(count)
    resume.wait()
    cpu_from = time.process_time()
    selector = selectors.DefaultSelector()
    for reader in readers:
        reader.sock.setblocking(False)
        selector.register(reader.sock, selectors.EVENT_READ, reader)
    pending = set(readers)
    last_progress = time.monotonic()
    while pending:
        for key, _ in selector.select(0.05):
            reader = key.data
            try:
                data, arrived, now = receive(reader.sock)
            except OSError:
                data = b""
            if not data:  # the server ended the stream
                selector.unregister(reader.sock)
                pending.discard(reader)
                continue
            reader.receive(data, arrived, now)
            last_progress = time.monotonic()
        if stop.is_set():
            for reader in pending:
                reader.parse_kept()
            pending = {r for r in pending if r.accounted < expected.value}
            if time.monotonic() - last_progress > DRAIN_IDLE_S:
                break
    for reader in readers:  # those whose stream ended before the publisher stopped, too
        reader.parse_kept()
    cpu_s = time.process_time() - cpu_from
    for reader in readers:
        reader.sock.close()
    results.put({"streams": [r.summary() for r in readers], "latencies": latencies.tobytes(),
                 "read_latencies": read_latencies.tobytes(), "cpu_s": cpu_s})


@dataclass
class FanoutResult:
    subscribers: int
    published: int
    publish_seconds: float
    publish_errors: int
    publish_latencies_ms: list[float]
    streams: list[dict[str, Any]]
    latencies_ms: list[float]
    read_latencies_ms: list[float]
    client_cpu_s: float
    server_cpu_s: float | None
    refused: list[str]
    started_wall: float

    def summary(self) -> dict[str, Any]:
        delivered = sum(s["distinct"] + s["duplicates"] for s in self.streams)
        last_receive = max((s["last_receive"] for s in self.streams), default=0.0)
        delivery_window = max(last_receive - self.started_wall, self.publish_seconds) if last_receive else 0
        out = {
            "subscribers": self.subscribers, "published": self.published,
            "published_per_s": round(self.published / self.publish_seconds, 1) if self.publish_seconds else 0.0,
            "delivered_per_s": round(delivered / delivery_window, 1) if delivery_window else 0.0,
            **latency_summary(self.latencies_ms, (50, 99)),
            **{f"read_{key}": value for key, value in latency_summary(self.read_latencies_ms, (50, 99)).items()},
            "lost": sum(max(0, self.published - s["distinct"] - s["gap_covered"]) for s in self.streams),
            "gap_reported": sum(s["gap_covered"] for s in self.streams),
            "duplicated": sum(s["duplicates"] for s in self.streams),
            "reordered": sum(s["reordered"] for s in self.streams),
            "publish_errors": self.publish_errors,
            "publish_rpc_p50_ms": latency_summary(self.publish_latencies_ms, (50,))["p50_ms"],
            "client_cpu_s": round(self.client_cpu_s, 2),
        }
        if self.server_cpu_s is not None:
            out["server_cpu_us_per_event"] = round(self.server_cpu_s / max(self.published, 1) * 1e6, 1)
        if self.refused:
            out["refused"] = self.refused
        return out


def echo_request(target: Target, seq: int, pad: bytes = b"") -> bytes:
    padding = b',"pad":"%s"' % pad if pad else b""
    body = b'{"jsonrpc":"2.0","id":%d,"method":"echo.ping","params":{"seq":%d%s}}' % (seq, seq, padding)
    return target.request("POST", "/rpc", body)


def run_fanout(target: Target, subscribers: int, *, duration: float | None = None, events: int | None = None,
               processes: int | None = None, rcvbuf: int | None = None, pause_s: float = 0.0,
               pad_bytes: int = 0, server_pid: int | None = None) -> FanoutResult:
    """Open ``subscribers`` live streams, then publish with ``echo.ping`` back to back for
    ``duration`` s (or ``events`` calls) and collect what every subscriber received.

    With ``pause_s`` the subscribers read nothing until ``pause_s`` s after the publisher
    stopped: a paused reader. ``rcvbuf`` shrinks its socket buffer and ``pad_bytes`` makes
    each event bigger, so that kernel buffers cannot absorb the pause and the server's own
    handling of a slow reader is what gets measured.
    """
    if (duration is None) == (events is None):
        raise ValueError("give exactly one of duration and events")
    context = multiprocessing.get_context("fork")
    ready, results = context.Queue(), context.Queue()
    resume, stop = context.Event(), context.Event()
    expected = context.Value("q", 1 << 62)
    shares = spread(subscribers, processes or min(subscribers, os.cpu_count() or 2))
    workers = [context.Process(target=_subscriber_worker, daemon=True,
                               args=(target, share, rcvbuf, ready, resume, stop, expected, results))
               for share in shares]
    for worker in workers:
        worker.start()
    refused = [answer for answer in (ready.get(timeout=60) for _ in workers) if isinstance(answer, str)]
    if pause_s <= 0:
        resume.set()
    pad = b"x" * pad_bytes
    publish_latencies: list[float] = []
    published = errors = 0
    cpu_before = process_cpu_seconds(server_pid) if server_pid else None
    started_wall = time.time()
    started = time.monotonic()
    with HttpConnection(target) as conn:
        while (time.monotonic() - started < duration) if duration is not None else (published < events):
            sent = time.monotonic()
            response = conn.send(echo_request(target, published + errors, pad))
            if response.status == 200 and b'"pong"' in response.body:
                published += 1
                publish_latencies.append((time.monotonic() - sent) * 1000)
            else:
                errors += 1
    publish_seconds = time.monotonic() - started
    expected.value = published
    if pause_s > 0:
        time.sleep(pause_s)
        resume.set()
    stop.set()
    live = len(workers) - len(refused)
    parts = [results.get(timeout=120) for _ in range(live)]
    server_cpu = process_cpu_seconds(server_pid) - cpu_before if server_pid else None
    for worker in workers:
        worker.join(10)
    latencies: list[float] = []
    read_latencies: list[float] = []
    for part in parts:
        latencies.extend(array("d", part["latencies"]))
        read_latencies.extend(array("d", part["read_latencies"]))
    return FanoutResult(subscribers=subscribers, published=published, publish_seconds=publish_seconds,
                          publish_errors=errors, publish_latencies_ms=publish_latencies,
                          streams=[s for part in parts for s in part["streams"]], latencies_ms=latencies,
                          read_latencies_ms=read_latencies,
                          client_cpu_s=sum(p["cpu_s"] for p in parts), server_cpu_s=server_cpu, refused=refused,
                          started_wall=started_wall)


def hold_idle_streams(target: Target, count: int) -> list[socket.socket]:
    """Open ``count`` event streams and keep them open without reading (the caller closes them)."""
    streams: list[socket.socket] = []
    try:
        for _ in range(count):
            streams.append(open_stream(target)[0])
    except BaseException:
        for sock in streams:
            sock.close()
        raise
    return streams
