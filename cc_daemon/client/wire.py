"""One HTTP/1.1 request and its whole reply over a kept-alive connection, standard library only.

Owns: the connection a ``Client`` sends its calls over (a Unix socket or TCP, with Nagle off),
reusing it while the daemon keeps it open and never sending on one the daemon has closed,
and the ``Reply`` it hands back (the few ``requests.Response`` members the client reads).

Must not: stream (``EventStream`` reads ``/events`` with ``requests`` and ``sseclient``),
know the contract's headers, or retry a request: a POST is not idempotent, so a request is
sent once, on a connection checked to be alive just before.

Why neither ``requests`` nor ``http.client`` here: importing ``requests`` (urllib3, charset
detection, TLS) costs a command-line call about 55 ms and ``http.client`` (the email parser,
TLS) about 18 ms, several times the interpreter's own start, and a one-shot
``cheetahclaws rpc`` from a shell loop pays it on every run (bench/cli_latency.py measures
it). The reply is read with the daemon's own header and body readers
(``transport.framing``, which hold the same limits as ``http.client``).
"""

from __future__ import annotations

import json
import select
import socket
from typing import Any

from ..transport.addresses import ListenAddress
from ..transport.framing import Headers, HttpError, http_version, read_headers, read_request_body

#: The largest reply body read (a batch's reply is capped far below this on the daemon's side).
MAX_REPLY_BYTES = 256 * 1024 * 1024


class ReplyError(Exception):
    """The daemon's reply is not well-formed HTTP/1.x."""


class Reply:
    """A complete HTTP reply: ``status_code``, ``headers`` (case-insensitive ``get``), ``content``."""

    def __init__(self, status_code: int, headers: Headers, content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Wire:
    """Requests to one daemon address, one at a time (a ``Client`` is used by one thread)."""

    def __init__(self, address: str):
        self._address = ListenAddress.parse(address)
        self._host = "localhost" if self._address.scheme == "unix" else self._address.url()[len("tcp://"):]
        self._sock: socket.socket | None = None
        self._rfile: Any = None

    def exchange(self, verb: str, path: str, headers: dict[str, str], body: bytes | None,
                 timeout: float) -> Reply:
        """Send one request and read its whole reply. Raises ``TimeoutError`` when the daemon
        does not answer within ``timeout`` seconds, ``OSError`` when the connection fails and
        ``ReplyError`` for a reply that is not HTTP; the connection is dropped then."""
        sock = self._usable(timeout)
        body = body or b""
        head = [f"{verb} {path} HTTP/1.1", f"Host: {self._host}", f"Content-Length: {len(body)}",
                *(f"{name}: {value}" for name, value in headers.items())]
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            reply, keep = self._read_reply(verb)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return reply

    def _read_reply(self, verb: str) -> tuple[Reply, bool]:
        while True:
            status_line = self._rfile.readline(65537).decode("latin-1").rstrip("\r\n")
            if not status_line:
                raise ConnectionResetError("the daemon closed the connection without a reply")
            version_text, _, rest = status_line.partition(" ")
            version, status_text = http_version(version_text), rest[:3]
            if version is None or not status_text.isdecimal():
                raise ReplyError(f"not an HTTP status line: {status_line[:100]!r}")
            try:
                headers = read_headers(self._rfile)
                status = int(status_text)
                if status >= 200 or status == 101:
                    break  # 1xx interim replies (100 Continue) are read and skipped
            except Exception as exc:
                raise ReplyError(f"malformed reply headers: {exc}") from None
        connection = (headers.get("Connection") or "").lower()
        keep = version >= (1, 1) and "close" not in connection
        if verb == "HEAD" or status in (204, 304):
            return Reply(status, headers, b""), keep
        framed = headers.get("Content-Length") is not None or headers.get("Transfer-Encoding") is not None
        try:
            content = (read_request_body(self._rfile, headers, MAX_REPLY_BYTES) if framed
                       else self._rfile.read(MAX_REPLY_BYTES))  # delimited by the end of the connection
        except HttpError as exc:
            raise ReplyError(f"malformed reply body: {exc.body.get('detail') or exc}") from None
        return Reply(status, headers, content), keep and framed

    def _usable(self, timeout: float) -> socket.socket:
        if self._sock is not None and _closed_by_peer(self._sock):
            self.close()  # the daemon's idle timeout ended it: open a new one, send nothing twice
        if self._sock is None:
            address = self._address
            sock = socket.socket(address.family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address.sockaddr())
                if address.scheme == "tcp":  # a small request must not wait for an ACK (Nagle)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except BaseException:
                sock.close()
                raise
            self._sock, self._rfile = sock, sock.makefile("rb")
        self._sock.settimeout(timeout)
        return self._sock

    def close(self) -> None:
        sock, rfile, self._sock, self._rfile = self._sock, self._rfile, None, None
        if rfile is not None:
            rfile.close()
        if sock is not None:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when an idle kept-alive connection is readable: between replies, that can only
    be the end of the stream (or an error), never data the daemon sends unasked."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
