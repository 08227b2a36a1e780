"""Connection exhaustion: the owner's calls while another local user floods the TCP listener.

Owns: the two floods of RFC 0002 §9 (many idle connections; slowloris connections that
trickle their headers and reconnect when cut off), run in a process of their own (as
another uid when started as root), bounded in count and time and aimed only at loopback;
and the owner's probe: calls over the Unix socket and over TCP with the right token, each
on a new connection, with their latencies. ``python -m bench.connection_flood`` starts a
daemon listening on both, runs each flood and prints the figures as JSON lines.

Must not: judge the figures beyond printing them (the test asserts the targets) or send
anything to an address off this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

#: A header that never ends: a slowloris connection sends it one byte at a time.
SLOW_HEADERS = b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 4000
#: The uid floods run as when we are root: any uid that is not the owner's.
NOBODY = 65534


def flood(host: str, port: int, mode: str, count: int, seconds: float, trickle_s: float = 0.2,
          ready: TextIO = sys.stdout) -> None:
    """Hold ``count`` connections for ``seconds`` s: ``idle`` ones send nothing (as in the
    finding: opened once and left open), ``slowloris`` ones send a header byte every
    ``trickle_s`` and are reopened whenever the daemon closes one."""
    selector = selectors.DefaultSelector()
    sent: dict[socket.socket, int] = {}

    def open_one() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            return
        sent[sock] = 0
        selector.register(sock, selectors.EVENT_READ)

    def drop(sock: socket.socket) -> None:
        selector.unregister(sock)
        sent.pop(sock, None)
        sock.close()

    for _ in range(count):
        open_one()
    print("ready", file=ready, flush=True)
    deadline = time.monotonic() + seconds
    next_trickle = time.monotonic()
    while (now := time.monotonic()) < deadline:
        for key, _ in selector.select(timeout=max(0.0, min(next_trickle, deadline) - now)):
            drop(key.fileobj)  # readable: the daemon answered or closed it
            if mode == "slowloris":
                open_one()
        if mode == "slowloris" and time.monotonic() >= next_trickle:
            next_trickle = time.monotonic() + trickle_s
            for sock in list(sent):
                offset = sent[sock] % len(SLOW_HEADERS)
                try:
                    sent[sock] += sock.send(SLOW_HEADERS[offset:offset + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    drop(sock)
                    open_one()
        while mode == "slowloris" and len(sent) < count:
            open_one()
    for sock in list(sent):
        drop(sock)


@dataclass
class Probe:
    """The owner's calls: latencies of those answered, and the failures."""
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        ordered = sorted(self.latencies_ms)
        served = len(ordered)
        return {"calls": served + len(self.failures), "served": served,
                "p50_ms": round(ordered[served // 2], 2) if ordered else None,
                "max_ms": round(ordered[-1], 2) if ordered else None, "failures": self.failures[:3]}


def owner_call(address: str, token: str | None, timeout: float = 2.0) -> float:
    """One ping on a new connection, as a user's script makes it; milliseconds, or raises."""
    body = b'{"jsonrpc":"2.0","method":"system.ping","id":1}'
    headers = (f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nCheetahclaws-Api-Version: 0\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
    if token:
        headers += f"Authorization: Bearer {token}\r\n"
    started = time.perf_counter()
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX)
        target: object = address[len("unix://"):]
    else:
        host, port = address[len("tcp://"):].rsplit(":", 1)
        sock = socket.socket()
        target = (host, int(port))
    with sock:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.sendall(headers.encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 200") or b'"pong"' not in answer:
        raise RuntimeError(answer[:60].decode(errors="replace") or "closed without an answer")
    return (time.perf_counter() - started) * 1000


def probe(address: str, token: str | None, calls: int, pause_s: float = 0.02) -> Probe:
    result = Probe()
    for _ in range(calls):
        try:
            result.latencies_ms.append(owner_call(address, token))
        except (OSError, RuntimeError) as exc:
            result.failures.append(f"{type(exc).__name__}: {exc}")
        time.sleep(pause_s)  # paced like a script in a loop, not a benchmark
    return result


class Flooder:
    """A flood in a forked process of its own, as another user when we are root (a fork, not
    an exec: the interpreter may live under /root, which that user cannot enter)."""

    def __init__(self, tcp_address: str, mode: str, count: int, seconds: float):
        host, port = tcp_address[len("tcp://"):].rsplit(":", 1)
        ready_read, ready_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the caller's code
            status = 1
            try:
                os.close(ready_read)
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                ready = os.fdopen(ready_write, "w")
                flood(host, int(port), mode, count, seconds, ready=ready)
                status = 0
            finally:
                os._exit(status)
        os.close(ready_write)
        with os.fdopen(ready_read) as ready:
            if ready.readline().strip() != "ready":
                self.stop()
                raise RuntimeError(f"the {mode} flood did not start")

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


def measure(unix_address: str, tcp_address: str, token: str, mode: str, count: int, calls: int) -> dict:
    """The owner's calls over both listeners while ``count`` ``mode`` connections flood TCP."""
    flooder = Flooder(tcp_address, mode, count, seconds=60)
    try:
        time.sleep(1.0)  # let the flood reach the daemon's accept loop in full
        over_unix = probe(unix_address, None, calls)
        over_tcp = probe(tcp_address, token, calls)
    finally:
        flooder.stop()
    return {"flood": mode, "connections": count, "unix": over_unix.summary(), "tcp": over_tcp.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connection_flood", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="owner calls per listener per flood")
    args = parser.parse_args(argv)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ccd-flood-"))
    process = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(root),
                                "--listen", f"unix://{root}/d.sock", "--listen", "tcp://127.0.0.1:0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # "cc_daemon listening on unix://... and tcp://... (pid N)"
        addresses = line.split(" on ", 1)[1].split(" (pid")[0].split(" and ")
        unix_address, tcp_address = sorted(addresses, reverse=True)  # "unix://..." > "tcp://..."
        token = (root / "daemon_token").read_text().strip()
        for mode, count in (("idle", 2000), ("slowloris", 600)):
            print(json.dumps(measure(unix_address, tcp_address, token, mode, count, args.calls)), flush=True)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
