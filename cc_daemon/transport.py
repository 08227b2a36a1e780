"""The HTTP/1.1 listener: one request handler for TCP and Unix sockets.

Owns: listen addresses, the threading servers, HTTP framing (keep-alive, chunked
streaming for SSE, one buffered write per response), request hardening (header and body
deadlines, body size limit, connection cap), routing to the endpoints, and turning
events into SSE frames.

Must not: hold any service state of its own. It calls into the services it is given
(``Services``): the authenticator, the client registry, the JSON-RPC dispatcher and the
event bus. Services never import this module.
"""

from __future__ import annotations

import collections
import errno
import http
import io
import ipaddress
import json
import logging
import os
import re
import selectors
import signal
import socket
import socketserver
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from . import API_VERSION, API_VERSION_HEADER, __version__
from .auth import Authenticator, Connection, Denied, Refusal, peer_credentials
from .events import SHUTDOWN, Event, EventBus, EventFilter, Gap, Subscription, SubscriptionEnded, compact_json
from .identity import CLIENT_ID_RE, Caller, ClientRegistry, clean_kind
from .metrics import Metrics
from .rpc import Dispatcher

log = logging.getLogger("cc_daemon.transport")

#: A Content-Length (RFC 9110 8.6) and a chunk size (RFC 9112 7.1): digits only. int() also
#: takes "-1", "+5" and "1_0", and rfile.read(-1) would read to the end of the stream.
CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,19}")
CHUNK_SIZE_RE = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: Longest Unix socket path the kernel accepts (sun_path is 108 bytes on Linux, 104 on BSD).
MAX_UNIX_PATH = 107 if os.uname().sysname == "Linux" else 103
SERVER_VERSION = f"cc_daemon/{__version__}"


# -- addresses --------------------------------------------------------------------------
class AddressError(ValueError):
    """A ``--listen`` value that cannot be used; the message is for humans."""


@dataclass(frozen=True)
class ListenAddress:
    scheme: str  # "unix" or "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        if text.startswith("unix://"):
            path = text[len("unix://"):]
            if not path.startswith("/"):
                raise AddressError(f"unix socket path must be absolute: {text!r} (use unix:///abs/path.sock)")
            return cls.unix(Path(path))
        if text.startswith("tcp://"):
            return cls._parse_tcp(text)
        raise AddressError(f"unsupported listen address {text!r}: use unix:///abs/path.sock or tcp://HOST:PORT")

    @classmethod
    def unix(cls, path: Path) -> ListenAddress:
        if len(os.fsencode(str(path))) > MAX_UNIX_PATH:
            raise AddressError(f"unix socket path is {len(os.fsencode(str(path)))} bytes, longer than "
                               f"the OS limit of {MAX_UNIX_PATH}: {path}")
        return cls("unix", path=str(path))

    @classmethod
    def _parse_tcp(cls, text: str) -> ListenAddress:
        rest = text[len("tcp://"):].rstrip("/")
        if rest.startswith("["):
            host, sep, port_text = rest[1:].partition("]:")
        else:
            host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise AddressError(f"tcp address needs HOST:PORT: {text!r} (IPv6: tcp://[::1]:8765)")
        try:
            port = int(port_text)
        except ValueError:
            raise AddressError(f"tcp port is not a number: {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise AddressError(f"tcp port out of range 0..65535: {port}")
        return cls("tcp", host=host, port=port)

    def url(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def is_loopback(self) -> bool:
        if self.scheme == "unix":
            return True
        try:
            infos = socket.getaddrinfo(self.host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return False
        return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


# -- services the handler calls -------------------------------------------------------------
@dataclass
class Limits:
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 512
    #: Idle keep-alive connection lifetime, and the send timeout of a stalled SSE reader.
    idle_timeout_s: float = 60.0
    #: Whole-request deadline once its first byte arrived (headers and body).
    request_timeout_s: float = 15.0
    heartbeat_s: float = 15.0
    retry_ms: int = 3000


@dataclass
class Services:
    authenticator: Authenticator
    clients: ClientRegistry
    dispatcher: Dispatcher
    bus: EventBus
    metrics: Metrics
    limits: Limits = field(default_factory=Limits)
    readiness: Callable[[], tuple[bool, dict[str, Any]]] = lambda: (True, {})
    unauthenticated_metrics: bool = False


# -- errors as responses ----------------------------------------------------------------
class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = (),
                 close: bool = False):
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.headers = headers
        self.close = close


#: How each kind of auth refusal reads on the wire: its status and JSON body.
REFUSALS: dict[Refusal, tuple[int, dict[str, Any]]] = {
    Refusal.UNAUTHENTICATED: (401, {"error": "unauthenticated"}),
    Refusal.WRONG_PEER: (401, {"error": "unauthenticated"}),
    Refusal.LOCKED_OUT: (429, {"error": "rate limited"}),
    Refusal.HOST_NOT_ALLOWED: (403, {"error": "host not allowed"}),
    Refusal.ORIGIN_NOT_ALLOWED: (403, {"error": "origin not allowed"}),
}


def refusal(denied: Denied) -> HttpError:
    """The answer to a request auth denied (a lockout also says when to retry, in whole seconds)."""
    status, body = REFUSALS[denied.kind]
    retry = () if denied.retry_after is None else (("Retry-After", str(max(1, round(denied.retry_after)))),)
    return HttpError(status, body, retry)


# -- request headers ----------------------------------------------------------------------
#: The stdlib's limits (``http.client``): longest header line, most header lines per request.
MAX_HEADER_LINE = 65536
MAX_HEADER_LINES = 100
#: A field line: a name of visible characters other than ':' (the email parser's rule).
FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]*:")
HEADERS_END = (b"\r\n", b"\n", b"")


class HeadersTooLarge(Exception):
    """A header line or the number of header lines is over the limit (answered with 431)."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.message = message
        self.detail = detail


class Headers:
    """A request's header fields by case-insensitive name; the first of repeated fields wins.

    Answers ``get`` like the ``email.message.Message`` the stdlib builds, which scans every
    field on every lookup; building that Message cost more than the rest of a ping.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]):
        self._fields = fields

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name.lower(), default)


NO_HEADERS = Headers({})


def read_headers(rfile) -> Headers:
    """The header lines up to the blank line, parsed as ``http.client.parse_headers`` does:
    same limits, obsolete line folding kept in the value, and a line that is neither a field
    nor a continuation ends the fields (the rest is read and ignored)."""
    fields: dict[str, str] = {}
    folding: str | None = None  # the field a continuation line would extend
    ignoring = False
    for count in range(1, MAX_HEADER_LINES + 2):
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise HeadersTooLarge("Line too long", "header line")
        if count > MAX_HEADER_LINES:
            raise HeadersTooLarge("Too many headers", f"got more than {MAX_HEADER_LINES} headers")
        if line in HEADERS_END:
            break
        if ignoring:
            continue
        text = line.decode("iso-8859-1")
        match = FIELD_NAME.match(text)
        if match is not None:
            name = text[:match.end() - 1].lower()
            folding = None if name in fields else name
            if folding is not None:
                fields[name] = text[match.end():].lstrip(" \t")
        elif text[0] in " \t":
            if folding is not None:
                fields[folding] += text
        else:
            ignoring = True
    return Headers({name: value.rstrip("\r\n") for name, value in fields.items()})


ROUTES: dict[str, tuple[str, ...]] = {
    "/rpc": ("POST",),
    "/events": ("GET",),
    "/healthz": ("GET",),
    "/readyz": ("GET",),
    "/metrics": ("GET",),
}
VERSIONED_PATHS = frozenset({"/rpc", "/events"})


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_VERSION
    sys_version = ""

    server: DaemonServerMixin

    # -- connection lifecycle -----------------------------------------------------------
    def setup(self) -> None:
        """StreamRequestHandler's set-up, with the idle timeout kept by the kernel."""
        self.connection = self.request
        set_kernel_timeouts(self.connection, self.server.services.limits.idle_timeout_s)
        if self.server.transport == "tcp":
            # Headers and body go out in one write anyway; this removes the 40 ms
            # delayed-ACK stall for anything else (SSE chunks) on keep-alive connections.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = io.BufferedReader(TimeoutSocketIO(self.connection, "rb"))
        self.wfile = TimeoutSocketWriter(self.connection)
        self.conn = self._connection_info()
        self.client_kind: str | None = None

    def _connection_info(self) -> Connection:
        if self.server.transport == "unix":
            try:
                cred = peer_credentials(self.request)
            except OSError:
                cred = None
            uid = cred.uid if cred else None
            return Connection("unix", f"uid:{uid}", uid)
        return Connection("tcp", str(self.client_address[0]))

    def handle_one_request(self) -> None:
        """One request, with a deadline from its first byte (slow senders are cut off)."""
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except (TimeoutError, OSError):
            self.close_connection = True
            return
        self.server.reaper.arm(self, self.server.services.limits.request_timeout_s)
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            log.debug("connection from %s dropped: %s", self.conn.peer, exc)
            self.close_connection = True
        finally:
            self.server.reaper.disarm(self)

    def parse_request(self) -> bool:
        """The request line and headers; False after an error answer was sent.

        The stdlib's checks and answers, with ``read_headers`` in place of its email-parser
        based header parsing.
        """
        self.command = None
        self.request_version = version = self.default_request_version
        self.close_connection = True
        self.headers = NO_HEADERS
        self.requestline = requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            number = http_version(version)
            if number is None:
                self.send_error(400, f"Bad request version ({version!r})")
                return False
            if number >= (2, 0):
                self.send_error(505, f"Invalid HTTP version ({version[5:]})")
                return False
            self.close_connection = number < (1, 1)
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(400, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(400, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        if path.startswith("//"):
            path = "/" + path.lstrip("/")  # never read as a scheme-relative URL (gh-87389)
        self.command, self.path = command, path
        try:
            self.headers = read_headers(self.rfile)
        except HeadersTooLarge as error:
            self.send_error(431, error.message, error.detail)
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect = self.headers.get("Expect", "").lower()
        if expect == "100-continue" and self.request_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def address_string(self) -> str:
        return self.conn.peer if hasattr(self, "conn") else "?"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # Per-request access lines cost real throughput; the metrics count requests instead.
        pass

    # -- HTTP verbs -----------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_HEAD(self) -> None:
        self.close_connection = True  # our error bodies would desync a HEAD keep-alive
        self._route("HEAD")

    def do_OPTIONS(self) -> None:
        self._route("OPTIONS")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by the stdlib parser (bad request line, huge headers...) as JSON."""
        try:
            self.close_connection = True
            phrase = http.HTTPStatus(code).phrase if code in http.HTTPStatus._value2member_map_ else "error"
            self._respond(code, {"error": phrase.lower(), "detail": message or phrase}, close=True)
            log.info("rejected malformed request from %s: %s %s", self.address_string(), code, message)
        except OSError:
            pass

    # -- routing --------------------------------------------------------------------------
    def _route(self, verb: str) -> None:
        services = self.server.services
        started = time.perf_counter()
        path = urlsplit(self.path).path
        self._in_flight = True
        self._body_consumed = False
        self.client_id = None  # per request: never echo an earlier request's id on this connection
        self.server.in_flight.enter()
        try:
            if path not in ROUTES:
                raise HttpError(404, {"error": "not found"})
            origin = self.headers.get("Origin")
            if verb == "OPTIONS" and origin:
                return self._preflight(origin)
            allowed = ROUTES[path]
            if verb not in allowed:
                raise HttpError(405, {"error": "method not allowed", "allow": list(allowed)},
                                (("Allow", ", ".join(allowed)),))
            self._authenticate(path, origin)
            if path in VERSIONED_PATHS:
                self._check_api_version()
            if path == "/rpc":
                self._serve_rpc()
            elif path == "/events":
                self._serve_events()
            elif path == "/healthz":
                self._respond(200, {"status": "ok", "version": __version__})
            elif path == "/readyz":
                ready, detail = services.readiness()
                self._respond(200 if ready else 503, {"ready": ready, **detail})
            elif path == "/metrics":
                self._respond_bytes(200, services.metrics.render().encode(),
                                    "text/plain; version=0.0.4; charset=utf-8")
        except HttpError as error:
            if error.close or self._unread_body():
                # Whatever body is left would be parsed as the next request; drop the connection.
                self.close_connection = True
            self._respond(error.status, error.body, extra_headers=error.headers, close=error.close)
        finally:
            self._leave_in_flight()
            services.metrics.inc("ccd_http_requests_total", path=path if path in ROUTES else "other")
            services.metrics.inc("ccd_http_request_seconds_total", time.perf_counter() - started)

    def _unread_body(self) -> bool:
        if self._body_consumed:
            return False
        return bool(self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0")

    def _leave_in_flight(self) -> None:
        if self._in_flight:
            self._in_flight = False
            self.server.in_flight.leave()

    def _authenticate(self, path: str, origin: str | None) -> None:
        services = self.server.services
        authenticator = services.authenticator
        denied = authenticator.browser_check(self.conn, self.headers.get("Host"), origin)
        if denied is None and (path in VERSIONED_PATHS or not services.unauthenticated_metrics):
            self.client_kind = clean_kind(self.headers.get("X-Client-Kind"))
            denied = authenticator.check(self.conn, self.headers.get("Authorization"), self.client_kind)
        if denied is not None:
            error = refusal(denied)
            services.metrics.inc("ccd_auth_denied_total", status=str(error.status))
            raise error

    def _check_api_version(self) -> None:
        got = self.headers.get(API_VERSION_HEADER)
        if got != API_VERSION:
            raise HttpError(426, {"error": "api_version_mismatch", "expected": API_VERSION, "got": got,
                                  "header": API_VERSION_HEADER},
                            # RFC 9110 asks a 426 to name what to upgrade to.
                            (("Upgrade", f"{API_VERSION_HEADER}/{API_VERSION}"),))

    def _preflight(self, origin: str) -> None:
        if not self.server.services.authenticator.origin_allowed(origin):
            raise refusal(Denied(Refusal.ORIGIN_NOT_ALLOWED, "preflight from an origin not allowed"))
        self._respond_bytes(204, b"", None, extra_headers=(
            ("Access-Control-Allow-Methods", "GET, POST"),
            ("Access-Control-Allow-Headers",
             f"Authorization, Content-Type, {API_VERSION_HEADER}, X-Client-Id, X-Client-Kind, Last-Event-ID"),
            ("Access-Control-Max-Age", "600"),
        ))

    def _caller(self) -> Caller:
        services = self.server.services
        presented = self.headers.get("X-Client-Id")
        if presented is not None and not CLIENT_ID_RE.match(presented):
            presented = None
        caller = services.clients.resolve(presented, self.client_kind, self.conn.transport, self.conn.peer)
        self.client_id = caller.client_id
        return caller

    # -- /rpc -----------------------------------------------------------------------------
    def _serve_rpc(self) -> None:
        caller = self._caller()
        body = self._read_body()
        self.server.reaper.disarm(self)  # the deadline bounds reading the request, not answering it
        reply = self.server.services.dispatcher.handle(body, caller)
        if reply.payload is None:
            self._respond_bytes(reply.status, b"", None)
        else:
            self._respond(reply.status, reply.payload)

    def _read_body(self) -> bytes:
        self._body_consumed = True  # from here on, any failure closes the connection itself
        limit = self.server.services.limits.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        if not CONTENT_LENGTH_RE.fullmatch(length_text.strip()):
            raise HttpError(400, {"error": "bad request", "detail": "Content-Length is not a number"}, close=True)
        length = int(length_text)
        if length > limit:
            raise HttpError(413, {"error": "payload too large", "limit_bytes": limit}, close=True)
        body = self.rfile.read(length)
        if len(body) < length:
            raise HttpError(400, {"error": "bad request", "detail": "body shorter than Content-Length"},
                            close=True)
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";", 1)[0].strip()
            if not CHUNK_SIZE_RE.fullmatch(size_text):
                raise HttpError(400, {"error": "bad request", "detail": "malformed chunk size"}, close=True)
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise HttpError(413, {"error": "payload too large", "limit_bytes": limit}, close=True)
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers: read and ignored
        return b"".join(parts)

    # -- /events --------------------------------------------------------------------------
    def _serve_events(self) -> None:
        services = self.server.services
        since, event_filter = self._event_request()
        caller = self._caller()
        self.server.reaper.disarm(self)  # a stream lives as long as its reader wants
        self._leave_in_flight()  # a stream is not a request that shutdown should wait for
        chunked = self.request_version != "HTTP/1.0"
        headers = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
                   ("X-Accel-Buffering", "no"), ("X-Client-Id", caller.client_id)]
        headers.append(("Transfer-Encoding", "chunked") if chunked else ("Connection", "close"))
        subscription = services.bus.subscribe(since, event_filter)
        subscription.tag = self.conn
        writer = SseWriter(self.wfile, self.connection, chunked, caller)
        try:
            self._write_head(200, headers)
            writer.send(f"retry: {services.limits.retry_ms}\n\n")
            self._stream(subscription, writer)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError) as exc:
            log.debug("event stream to %s ended: %s", self.conn.peer, exc)
        finally:
            subscription.close()
            self.close_connection = True

    def _event_request(self) -> tuple[int | None, EventFilter]:
        query = parse_qs(urlsplit(self.path).query)
        since_text = self.headers.get("Last-Event-ID") or first(query.get("since"))
        since = None
        if since_text is not None and since_text != "":
            try:
                since = int(since_text)
            except ValueError:
                since = -1
            if since < 0:
                raise HttpError(400, {"error": "bad request",
                                      "detail": "since / Last-Event-ID must be a non-negative integer"})
        types = frozenset(t for value in query.get("types", []) + query.get("type", [])
                          for t in value.split(",") if t)
        return since, EventFilter(types, first(query.get("session")))

    def _stream(self, subscription, writer: SseWriter) -> None:
        """Replay and catch up here; once caught up, the shared live-tail thread writes the
        stream until it falls behind or ends, and this thread takes over again."""
        heartbeat = self.server.services.limits.heartbeat_s
        delivered = self.server.services.metrics
        bus = self.server.services.bus
        live = LiveStream(subscription, writer)
        while True:
            if subscription.cursor >= bus.last_id() and self.server.live_tail.serve(live):
                live.take_back()
            try:
                batch = subscription.next_batch(heartbeat)
            except SubscriptionEnded as ended:
                if ended.reason == SHUTDOWN:
                    writer.send(render_frame(None, SHUTDOWN, compact_json(
                        {"ts": time.time(), "type": SHUTDOWN, "data": {"reason": "graceful"}})))
                writer.finish()
                return
            if not batch:
                writer.send(":\n\n")
                continue
            writer.send_events(batch)
            delivered.inc("ccd_events_delivered_total", len(batch))

    # -- writing --------------------------------------------------------------------------
    def _respond(self, status: int, payload: Any, *, extra_headers: tuple[tuple[str, str], ...] = (),
                 close: bool = False) -> None:
        body = encode_compact(payload).encode()
        self._respond_bytes(status, body, "application/json", extra_headers=extra_headers, close=close)

    def _respond_bytes(self, status: int, body: bytes, content_type: str | None, *,
                       extra_headers: tuple[tuple[str, str], ...] = (), close: bool = False) -> None:
        headers = list(extra_headers)
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(len(body))))
        client_id = getattr(self, "client_id", None)
        if client_id:
            headers.append(("X-Client-Id", client_id))
        if close or self.close_connection:
            headers.append(("Connection", "close"))
        self._write_head(status, headers, body)

    def _write_head(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """Status line, headers and body in one write: no Nagle / delayed-ACK stall."""
        lines = [RESPONSE_HEADS.get(status) or response_head(status)]
        origin = getattr(self, "headers", NO_HEADERS).get("Origin")
        if origin and self.server.services.authenticator.origin_allowed(origin):
            lines.append(f"Access-Control-Allow-Origin: {origin}")
            lines.append("Access-Control-Expose-Headers: X-Client-Id")
            lines.append("Vary: Origin")
        lines.extend(f"{name}: {value}" for name, value in headers)
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.server.services.metrics.inc("ccd_http_responses_total", status=str(status))


def response_head(status: int) -> str:
    """The status line and the headers every response carries."""
    phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
    return f"HTTP/1.1 {status} {phrase}\r\n{API_VERSION_HEADER}: {API_VERSION}\r\nServer: {SERVER_VERSION}"


RESPONSE_HEADS = {status.value: response_head(status.value) for status in http.HTTPStatus}
#: ``json.dumps`` with separators builds a new encoder per call; this one is built once.
encode_compact = json.JSONEncoder(separators=(",", ":")).encode


def http_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of ``HTTP/major.minor``, or None when it is not one (RFC 2145 rules)."""
    if not text.startswith("HTTP/"):
        return None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(part.isdecimal() and len(part) <= 10 for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def first(values: list[str] | None) -> str | None:
    return values[0] if values else None


def item_id(item: Event | Gap) -> int:
    """The id a reader's cursor stands at once ``item`` is delivered."""
    return item.missed_to if isinstance(item, Gap) else item.id


def render_frame(event_id: int | None, event_type: str, data_json: str) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event_type}\ndata: {data_json}\n\n"


class SseWriter:
    """Writes SSE text to a socket, framed as HTTP/1.1 chunks (or raw for HTTP/1.0)."""

    #: A batch goes out in writes of about this much: a reader that stops reading then pins
    #: one such piece in its stream's thread, not a whole page of events rendered (str,
    #: bytes and chunk framing: three copies of up to 512 events).
    WRITE_CHARS = 64 * 1024

    def __init__(self, wfile, sock: socket.socket, chunked: bool, viewer: Caller):
        self._wfile = wfile
        self._sock = sock
        self.chunked = chunked
        self.viewer = viewer

    def encode(self, text: str) -> bytes:
        data = text.encode("utf-8")
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def encode_events(self, batch: list[Event | Gap]) -> tuple[bytes, int]:
        """The frames of the first items of ``batch``, about ``WRITE_CHARS`` at most (at least
        one item), and how many items that is."""
        frames: list[str] = []
        size = 0
        for item in batch:
            frame = self._frame(item)
            frames.append(frame)
            size += len(frame)
            if size >= self.WRITE_CHARS:
                break
        return self.encode("".join(frames)), len(frames)

    def _frame(self, item: Event | Gap) -> str:
        event = item.as_event(time.time()) if isinstance(item, Gap) else item
        return render_frame(event.id, event.type, event.to_json(self.viewer))

    def send(self, text: str) -> None:
        self._wfile.write(self.encode(text))

    def send_events(self, batch: list[Event | Gap]) -> None:
        while batch:
            data, count = self.encode_events(batch)
            self._wfile.write(data)
            batch = batch[count:]

    def send_bytes(self, data: bytes) -> None:
        self._wfile.write(data)

    def send_without_waiting(self, data: bytes) -> int:
        """Write what the socket takes now; returns how many bytes that was (0 when full)."""
        try:
            return self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def finish(self) -> None:
        if self.chunked:
            self._wfile.write(b"0\r\n\r\n")


class LiveStream:
    """An event stream as the live-tail thread holds it, and what it hands back."""

    __slots__ = ("subscription", "writer", "last_write", "unsent", "failure", "returned")

    def __init__(self, subscription: Subscription, writer: SseWriter):
        self.subscription = subscription
        self.writer = writer
        self.last_write = time.monotonic()
        self.unsent = b""  # bytes of a frame the socket did not take
        self.failure: OSError | None = None
        self.returned = threading.Event()

    def take_back(self) -> None:
        """Back on the stream's own thread: finish what the live tail could not write."""
        failure, unsent = self.failure, self.unsent
        self.failure, self.unsent = None, b""
        if failure is not None:
            raise failure
        if unsent:
            self.writer.send_bytes(unsent)  # blocking, with the connection's send timeout


class SharedRead:
    """What one pass of the live tail read after a cursor through a filter, and its writes.

    Every caught-up stream with the same cursor and filter would read the same items: one of
    them reads, the others take its items, and streams that render them alike (the same
    framing, and the same answer to "is this event's originator me?") share one encoded
    write. A pass then costs one read and one encoding per distinct view, plus one send per
    stream, instead of rendering every event again for every subscriber.
    """

    __slots__ = ("items", "cursor", "_originators", "_writes")

    def __init__(self, items: list[Event | Gap], cursor: int):
        self.items = items
        self.cursor = cursor  # where a reader stands once it took every item
        # The only per-viewer part of a rendering (``Event.to_json``): usually one originator.
        self._originators = tuple(dict.fromkeys(
            item.originator for item in items if isinstance(item, Event) and item.originator is not None))
        self._writes: dict[tuple[bool, tuple[bool, ...]], tuple[bytes, int, int]] = {}

    def write_for(self, writer: SseWriter) -> tuple[bytes, int, int]:
        """The first write of these items as ``writer`` frames them: the bytes, how many items
        they hold, and the cursor after those items."""
        view = (writer.chunked, tuple(originator.is_held_by(writer.viewer) for originator in self._originators))
        write = self._writes.get(view)
        if write is None:
            data, count = writer.encode_events(self.items)
            write = (data, count, self.cursor if count == len(self.items) else item_id(self.items[count - 1]))
            self._writes[view] = write
        return write

    def left_behind(self, visible: int) -> bool:
        """True when a stream of this read has visible events still to read: the read stopped
        at a page or a gap before ``visible``, or a write held only the first items."""
        return self.cursor < visible or any(count < len(self.items) for _, count, _ in self._writes.values())


class LiveTail:
    """One thread that writes the live tail of every caught-up event stream.

    With a thread per stream, every publish woke every subscriber's thread: 64 subscribers
    meant 64 thread switches and GIL hand-offs per event (py-spy: two thirds of the daemon's
    time in ``Condition.notify_all``). A stream's own thread still replays history and
    handles whatever is slow or final; once its cursor reaches the newest event it hands the
    stream here (``serve``) and sleeps. On news from the bus this thread reads each stream's
    next events and writes them without blocking; streams at the same place read and render
    them once (``SharedRead``). A stream whose socket is full, that ended, or whose write
    failed goes back to its own thread, with the bytes not yet written.
    """

    #: Heartbeats go out in passes every quarter period, to streams silent for 3/4 of it,
    #: so that thousands of idle streams cost a few wake-ups per period, not one each.
    HEARTBEAT_PASSES = 4
    #: Passes are at least this far apart, so that a fast publisher's events go out several
    #: to a write: one system call per stream per pass, on our side and on the reader's.
    COALESCE_S = 0.002

    def __init__(self, bus: EventBus, metrics: Metrics, heartbeat_s: float):
        self._bus = bus
        self._metrics = metrics
        self._heartbeat_s = heartbeat_s
        self._cond = threading.Condition(threading.Lock())
        self._news = False
        self._arrivals: list[LiveStream] = []
        self._streams: list[LiveStream] = []  # only the live-tail thread touches this list
        self._delivered = 0  # events written in the current pass
        self._stopped = False
        self._thread: threading.Thread | None = None
        bus.add_listener(self._on_news)

    def _on_news(self) -> None:
        with self._cond:
            self._news = True
            self._cond.notify()

    def serve(self, stream: LiveStream) -> bool:
        """Write ``stream`` from the live-tail thread until it comes back (then True), or
        False at once when the live tail is stopped."""
        with self._cond:
            if self._stopped:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ccd-live-tail", daemon=True)
                self._thread.start()
            stream.returned.clear()
            self._arrivals.append(stream)
            self._cond.notify()
        stream.returned.wait()
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        try:
            self._loop()
        except Exception:
            log.exception("the live-tail thread stopped; event streams go on from their own threads")
        finally:
            with self._cond:
                self._stopped = True
                streams, self._streams, self._arrivals = self._streams + self._arrivals, [], []
            for stream in streams:
                stream.returned.set()

    def _loop(self) -> None:
        pass_every = self._heartbeat_s / self.HEARTBEAT_PASSES
        next_heartbeat = time.monotonic() + pass_every
        last_pass = 0.0
        while True:
            wait = last_pass + self.COALESCE_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._cond:
                if not (self._news or self._arrivals or self._stopped):
                    self._cond.wait(max(0.0, next_heartbeat - time.monotonic()))
                if self._stopped:
                    return
                news, self._news = self._news, False
                arrivals, self._arrivals = self._arrivals, []
            now = last_pass = time.monotonic()
            heartbeat = now >= next_heartbeat
            if heartbeat:
                next_heartbeat = now + pass_every
            self._pass(arrivals, now, news, heartbeat)

    def _pass(self, arrivals: list[LiveStream], now: float, news: bool, heartbeat: bool) -> None:
        """Write every stream's news (or heartbeat) once; streams that go back are dropped."""
        reads: dict[tuple[int, EventFilter], SharedRead] = {}
        visible = self._bus.last_id()
        # New arrivals are read even without news: an event may have become visible
        # between their last read and their arrival here.
        self._streams = [stream for stream in self._streams
                         if self._advance(stream, reads if news else None, now, heartbeat)]
        self._streams.extend(stream for stream in arrivals if self._advance(stream, reads, now, heartbeat))
        if any(read.left_behind(visible) for read in reads.values()):  # another pass, without news
            with self._cond:
                self._news = True
        if self._delivered:
            self._metrics.inc("ccd_events_delivered_total", self._delivered)
            self._delivered = 0

    def _advance(self, stream: LiveStream, reads: dict | None, now: float, heartbeat: bool) -> bool:
        """Write ``stream``'s news (or a heartbeat); False when it went back to its own thread."""
        keep = self._write(stream, reads, now, heartbeat)
        if not keep:
            stream.returned.set()
        return keep

    def _write(self, stream: LiveStream, reads: dict | None, now: float, heartbeat: bool) -> bool:
        subscription = stream.subscription
        try:
            data, count = self._news_for(stream, reads) if reads is not None else (b"", 0)
        except SubscriptionEnded:
            return False  # its own thread ends the stream
        if not data:
            if not (heartbeat and now - stream.last_write >= self._heartbeat_s * 0.75):
                return subscription.end_reason is None
            data = stream.writer.encode(":\n\n")
        try:
            sent = stream.writer.send_without_waiting(data)
        except OSError as exc:
            stream.failure = exc
            return False
        stream.last_write = now
        self._delivered += count
        if sent < len(data):
            stream.unsent = data[sent:]
            return False
        # An ended stream goes back once what was read is written: its own thread offers
        # the rest (after a graceful shutdown) and says goodbye.
        return subscription.end_reason is None

    @staticmethod
    def _news_for(stream: LiveStream, reads: dict[tuple[int, EventFilter], SharedRead]) -> tuple[bytes, int]:
        """The next write of ``stream`` and how many items it holds (``b""``: nothing new)."""
        subscription = stream.subscription
        key = (subscription.cursor, subscription.filter)
        # An ended subscription reads for itself: ``next_batch`` knows what it may still offer.
        read = reads.get(key) if subscription.end_reason is None else None
        if read is None:
            items = subscription.next_batch(0)
            read = reads[key] = SharedRead(items, subscription.cursor)
        if not read.items:
            subscription.resume_after(read.cursor)  # a filtered stream also moves past what it skipped
            return b"", 0
        data, count, cursor = read.write_for(stream.writer)
        # The stream took these items as its own read would have: from the same cursor through
        # the same filter (if more became visible since, the news of it brings another pass).
        # A write that holds only the first items leaves the cursor after them.
        subscription.resume_after(cursor)
        return data, count


# -- threads ----------------------------------------------------------------------------
def leave_signals_to_the_main_thread() -> None:
    """Block the stop signals in the calling thread.

    Python runs signal handlers only in the main thread; a SIGTERM the kernel hands to
    another thread only raises a flag there, which a main thread asleep in an untimed wait
    never looks at: ``serve`` then ignored that SIGTERM (about 2 stops in 5 right after an
    event stream closed, with the live tail). Every thread of this module blocks them, so
    the kernel hands them to the main thread (or to one of the few other service threads).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


# -- sockets ----------------------------------------------------------------------------
def set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Receive and send timeouts kept by the kernel (SO_RCVTIMEO / SO_SNDTIMEO) on a blocking socket.

    ``settimeout`` gives the same timeouts with a poll() before every recv and every send:
    two more system calls, and GIL hand-offs, per request.
    """
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    timeval = struct.pack("ll", whole, micros or (0 if whole else 1))  # all zero would mean "never"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class TimeoutSocketIO(socket.SocketIO):
    """Reads a socket with kernel timeouts: an expired one raises TimeoutError, as under ``settimeout``."""

    def readinto(self, buffer) -> int:
        received = super().readinto(buffer)
        if received is None:  # EAGAIN on a blocking socket: SO_RCVTIMEO expired
            self._timeout_occurred = True
            raise TimeoutError("timed out")
        return received


class TimeoutSocketWriter(io.BufferedIOBase):
    """Unbuffered writes (each ``write`` is one ``sendall``); an expired send timeout raises TimeoutError."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        try:
            self._sock.sendall(data)
        except BlockingIOError:  # EAGAIN on a blocking socket: SO_SNDTIMEO expired
            raise TimeoutError("timed out") from None
        return len(data)

    def fileno(self) -> int:
        return self._sock.fileno()


# -- servers ----------------------------------------------------------------------------
class Reaper:
    """Cuts off connections whose current request outlived its deadline.

    Socket timeouts apply per ``recv``; a client trickling one byte at a time would never
    trip them. A scan once a second over the open connections (at most the connection
    cap) costs nothing per request, unlike a timer per request.
    """

    SCAN_INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[RequestHandler, float] = {}
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="ccd-reaper", daemon=True).start()

    def arm(self, handler: RequestHandler, seconds: float) -> None:
        with self._lock:
            self._deadlines[handler] = time.monotonic() + seconds

    def disarm(self, handler: RequestHandler) -> None:
        with self._lock:
            self._deadlines.pop(handler, None)

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        while not self._stopped.wait(self.SCAN_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                expired = [h for h, deadline in self._deadlines.items() if deadline <= now]
                for handler in expired:
                    del self._deadlines[handler]
            for handler in expired:
                log.info("request from %s exceeded its deadline; closing", handler.address_string())
                try:
                    handler.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class InFlight:
    """Counts requests being answered, so a graceful stop can let them finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def enter(self) -> None:
        with self._cond:
            self._count += 1

    def leave(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count <= 0, timeout)


class DaemonServerMixin:
    """Connection cap and shared state for both socket families."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True
    transport = "tcp"
    services: Services
    reaper: Reaper

    def init_daemon_server(self, services: Services) -> None:
        self.services = services
        self.reaper = Reaper()
        self.refuser = Refuser()
        self.live_tail = LiveTail(services.bus, services.metrics, services.limits.heartbeat_s)
        self.in_flight = InFlight()
        self._active = 0
        self._active_lock = threading.Lock()
        services.metrics.gauge("ccd_connections_open", "Open client connections", lambda: self._active)

    def process_request(self, request, client_address) -> None:
        with self._active_lock:
            over = self._active >= self.services.limits.max_connections
            if not over:
                self._active += 1
        if over:
            self.services.metrics.inc("ccd_connections_refused_total")
            self.refuser.refuse(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  daemon=True, name="ccd-conn")
        thread.start()

    def _serve_connection(self, request, client_address) -> None:
        leave_signals_to_the_main_thread()
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        log.exception("unhandled error on a connection")

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        self.reaper.stop()
        self.refuser.stop()
        self.live_tail.stop()

    def stop_accepting(self) -> None:
        """Stop the accept loop now rather than at its next poll tick."""
        stopper = threading.Thread(target=self.shutdown, name="ccd-stop")
        stopper.start()
        # A throwaway connection wakes the selector the accept loop is sleeping in.
        while stopper.is_alive():
            try:
                with socket.socket(self.address_family, socket.SOCK_STREAM) as poke:
                    poke.settimeout(0.2)
                    poke.connect(self.server_address)
            except OSError:
                pass
            stopper.join(0.05)


class Refuser:
    """Answers connections over the cap with 503 at once, and closes them without a thread each.

    The answer is sent on the accept thread without waiting: it fits the empty send buffer of
    a new connection (what does not is sent as soon as the socket takes it). The write side
    is then shut and the connection lingers, read and discarded, until its peer closes or
    ``LINGER_S`` passed: closing with unread input makes the peer see a reset instead of our
    answer. One thread watches every lingering connection with a selector, so no refusal
    waits behind another's linger; beyond ``MAX_LINGERING`` connections the oldest is closed
    early (it has had its answer longest), as is the oldest of more than ``MAX_LINGERING``
    waiting for the thread to watch them: a flood costs a bounded number of descriptors.
    """

    BODY = b'{"error":"too many connections"}'
    RESPONSE = (f"HTTP/1.1 503 Service Unavailable\r\n{API_VERSION_HEADER}: {API_VERSION}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\nRetry-After: 1\r\n"
                "Connection: close\r\n\r\n").encode() + BODY
    LINGER_S = 0.5
    MAX_LINGERING = 256
    #: Read per readiness of one connection, so that a peer that keeps sending cannot keep
    #: the thread from the others.
    READ_BYTES = 65536

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._incoming: collections.deque[tuple[socket.socket, Lingering]] = collections.deque()  # not yet watched
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="ccd-refuser", daemon=True)
        self._thread.start()

    def refuse(self, sock: socket.socket) -> None:
        unsent = start_answer(sock, self.RESPONSE)
        with self._lock:
            if unsent is None or self._stopped:
                dropped: socket.socket | None = sock
            else:
                if not self._incoming:  # otherwise a wake-up is already on its way
                    self._wake()
                self._incoming.append((sock, Lingering(unsent, time.monotonic() + self.LINGER_S)))
                # The thread is behind (a flood, or no GIL for it): the oldest waiting goes now.
                dropped = self._incoming.popleft()[0] if len(self._incoming) > self.MAX_LINGERING else None
        if dropped is not None:
            dropped.close()

    def stop(self) -> None:
        """Close every lingering connection and the thread's own descriptors."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._wake()
        self._thread.join(2.0)

    def _wake(self) -> None:
        """Interrupt the thread's wait; the lock is held, so the wake-up socket is still open."""
        try:
            self._wake_write.send(b"\0")
        except BlockingIOError:
            pass  # full of wake-ups the thread has yet to read

    # -- the refuser's thread ---------------------------------------------------------------
    def _clear_wake(self) -> None:
        try:
            self._wake_read.recv(4096)
        except BlockingIOError:
            pass

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        lingering: dict[socket.socket, Lingering] = {}  # in order of refusal: oldest first
        try:
            while self._take_incoming(lingering):
                self._close_expired(lingering)
                for key, events in self._selector.select(self._timeout(lingering)):
                    if key.fileobj is self._wake_read:
                        self._clear_wake()
                    else:
                        self._serve(key.fileobj, events, lingering)  # type: ignore[arg-type]
        except Exception:
            log.exception("the refuser stopped: connections over the cap are answered and closed at once")
        finally:
            self._close_all(lingering)

    def _take_incoming(self, lingering: dict[socket.socket, Lingering]) -> bool:
        """Watch the connections answered since the last look; False once stopped."""
        with self._lock:
            if self._stopped:
                return False
            incoming, self._incoming = self._incoming, collections.deque()
        for sock, state in incoming:
            lingering[sock] = state
            try:
                self._selector.register(sock, state.wanted())
            except OSError:  # the kernel's limit of watched descriptors: no linger for this one
                self._forget(sock, lingering)
        return True

    def _close_expired(self, lingering: dict[socket.socket, Lingering]) -> None:
        now = time.monotonic()
        while lingering:
            sock, state = next(iter(lingering.items()))
            if state.deadline > now and len(lingering) <= self.MAX_LINGERING:
                return
            self._forget(sock, lingering)

    @staticmethod
    def _timeout(lingering: dict[socket.socket, Lingering]) -> float | None:
        if not lingering:
            return None
        return max(0.0, next(iter(lingering.values())).deadline - time.monotonic())

    def _serve(self, sock: socket.socket, events: int, lingering: dict[socket.socket, Lingering]) -> None:
        state = lingering[sock]
        try:
            if events & selectors.EVENT_READ and not sock.recv(self.READ_BYTES):
                state.peer_done = True
            if events & selectors.EVENT_WRITE:
                state.unsent = state.unsent[sock.send(state.unsent):]
                if not state.unsent:
                    sock.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            return
        except OSError:
            self._forget(sock, lingering)
            return
        if state.peer_done and not state.unsent:
            self._forget(sock, lingering)
        elif self._selector.get_key(sock).events != state.wanted():
            self._selector.modify(sock, state.wanted())

    def _forget(self, sock: socket.socket, lingering: dict[socket.socket, Lingering]) -> None:
        del lingering[sock]
        try:
            self._selector.unregister(sock)
        except KeyError:
            pass  # never registered: its registration failed
        sock.close()

    def _close_all(self, lingering: dict[socket.socket, Lingering]) -> None:
        with self._lock:
            self._stopped = True  # from here on, refuse() closes at once (after the answer)
            incoming, self._incoming = self._incoming, collections.deque()
            self._wake_read.close()
            self._wake_write.close()
        for sock, _ in incoming:
            sock.close()
        for sock in list(lingering):
            self._forget(sock, lingering)
        self._selector.close()


class Lingering:
    """A refused connection after its answer started: the bytes of it still to send, when it
    is closed whatever its peer does, and whether its peer has closed its side."""

    __slots__ = ("unsent", "deadline", "peer_done")

    def __init__(self, unsent: bytes, deadline: float):
        self.unsent = unsent
        self.deadline = deadline
        self.peer_done = False

    def wanted(self) -> int:
        """The selector events to watch: the peer's input until it ends, writability while
        some of the answer is unsent."""
        return (0 if self.peer_done else selectors.EVENT_READ) | (selectors.EVENT_WRITE if self.unsent else 0)


def start_answer(sock: socket.socket, data: bytes) -> bytes | None:
    """Send what a new connection takes of ``data`` now and shut its write side once all of it
    went; returns what is left to send, or None when the connection already failed."""
    try:
        sock.setblocking(False)
        sent = sock.send(data)
        if sent == len(data):
            sock.shutdown(socket.SHUT_WR)
    except BlockingIOError:
        sent = 0
    except OSError:
        return None
    return data[sent:]


class TcpServer(DaemonServerMixin, socketserver.TCPServer):
    transport = "tcp"

    def __init__(self, address: ListenAddress, services: Services):
        self.address_family = socket.AF_INET6 if ":" in (address.host or "") else socket.AF_INET
        self.init_daemon_server(services)
        socketserver.TCPServer.__init__(self, (address.host, address.port), RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call getfqdn(): a DNS round trip we do not need.
        socketserver.TCPServer.server_bind(self)


class UnixServer(DaemonServerMixin, socketserver.UnixStreamServer):
    transport = "unix"
    allow_reuse_address = False

    def __init__(self, path: Path, services: Services):
        self.init_daemon_server(services)
        prepare_socket_path(path)
        # Bind under a umask so the socket is 0600 from the start, not after a chmod.
        old_umask = os.umask(0o177)
        try:
            socketserver.UnixStreamServer.__init__(self, str(path), RequestHandler)
        finally:
            os.umask(old_umask)

    def get_request(self):
        request, _ = self.socket.accept()
        return request, ("unix", 0)


class SocketInUse(RuntimeError):
    """Something is listening at (or owns) the socket path; it is not ours to remove."""


def check_socket_dir(directory: Path) -> None:
    """Refuse a socket directory that another user could swap our socket out of.

    A directory writable by group or others lets them unlink our socket and put their own
    in its place, unless it is ours or sticky (like /tmp, where only owners may unlink).
    """
    st = directory.stat()
    shared_writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared_writable and st.st_uid != os.geteuid() and not st.st_mode & stat.S_ISVTX:
        raise SocketInUse(f"{directory} is writable by other users and not owned by us; "
                          "choose a private directory for the socket")


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` bindable, removing a leftover socket only when nobody answers on it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_socket_dir(path.parent)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale socket %s (nothing listens on it)", path)
        path.unlink()
        return
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise SocketInUse(f"{path} cannot be probed ({exc.strerror}); refusing to replace it") from None
    finally:
        probe.close()
    raise SocketInUse(f"another process is listening on {path}")


def make_server(address: ListenAddress, services: Services) -> TcpServer | UnixServer:
    if address.scheme == "unix":
        return UnixServer(Path(address.path or ""), services)
    return TcpServer(address, services)
