"""The request handler: one connection, its requests, and their answers, for TCP and Unix.

Owns: a connection's set-up (kernel timeouts, TCP_NODELAY, the peer as auth knows it), the
request line (the stdlib's checks, with our header parser), the request deadline, looking
each request up in the route table and applying the route's policy (the auth, API version
and CORS decisions are each made once, here), and writing answers: one write per
response, JSON error bodies, the client id and CORS headers.

Must not: know what an endpoint does (``endpoints`` does, path by path), or hold state
beyond the connection and the request being answered.
"""

from __future__ import annotations

import http
import io
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..auth import Connection, Denied, Refusal, peer_credentials
from ..logs import REQUEST_ID, new_request_id
from ..identity import CLIENT_ID_RE, Caller, clean_kind
from .endpoints import ROUTES
from .framing import (NO_HEADERS, SERVER_VERSION, HeadersTooLarge, HttpError, IncompleteRequest, declares_body,
                      encode_compact, encode_response, http_version, read_headers, read_request_body)
from .kernel import TimeoutSocketIO, TimeoutSocketWriter, set_kernel_timeouts
from .policy import PREFLIGHT_HEADERS, Route, check_api_version, cors_headers, cors_origin, refusal

if TYPE_CHECKING:
    from .servers import DaemonServerMixin

log = logging.getLogger("cc_daemon.transport")


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    http_1_0 = False  # set per request by parse_request
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
        # Per request, but an answer can precede the first request's parse (414).
        self.headers = NO_HEADERS
        self.request_id: str | None = None
        self.route: Route | None = None
        self.client_id: str | None = None

    def _connection_info(self) -> Connection:
        if self.server.transport == "unix":
            try:
                cred = peer_credentials(self.request)
            except OSError:
                cred = None
            return Connection.unix(cred.uid if cred else None)
        return Connection.tcp(str(self.client_address[0]), self.connection.getsockname()[1])

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
        self.http_1_0 = False  # an HTTP/1.0 request is answered in HTTP/1.0, close-delimited
        self.headers = NO_HEADERS
        self.route = None
        if not self.raw_requestline.endswith(b"\n"):
            # The connection ended inside its request line: the peer left, or the Gate or the
            # Reaper cut it off. Nobody is there to read an answer, and a flood of these
            # must not become a flood of log lines.
            return False
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
            self.close_connection = self.http_1_0 = number < (1, 1)
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(400, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:  # HTTP/0.9 has no status line at all: the nearest we speak is 1.0
            self.close_connection = self.http_1_0 = True
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
        except IncompleteRequest:
            # Cut off at its deadline, or abandoned: never judged, since that would count a
            # slow or dropped connection as a failed authentication. A peer that only shut
            # its sending side still reads why (RFC 9112 section 8 allows the answer).
            self.send_error(400, "Incomplete request", "the connection ended before the request's headers did")
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

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by the stdlib parser (bad request line, huge headers...) as JSON."""
        try:
            self.close_connection = True
            phrase = http.HTTPStatus(code).phrase if code in http.HTTPStatus._value2member_map_ else "error"
            self.respond(code, {"error": phrase.lower(), "detail": message or phrase}, close=True)
            log.info("rejected malformed request from %s: %s %s", self.address_string(), code, message)
        except OSError:
            pass

    # -- routing --------------------------------------------------------------------------
    def _route(self) -> None:
        """Any method: the route table says which a path answers (others get 405, and
        methods the stdlib has no ``do_`` name for get 501)."""
        services = self.server.services
        started = time.perf_counter()
        path = urlsplit(self.path).path
        self._in_flight = True
        self._body_consumed = False
        self.client_id = None  # per request: never echo an earlier request's id on this connection
        self.route = route = ROUTES.get(path)
        # Every log line written while this request is served names it (``logs``).
        self.request_id = new_request_id()
        request_context = REQUEST_ID.set(self.request_id)
        self.server.in_flight.enter()
        try:
            if route is None:
                raise HttpError(404, {"error": "not found"})
            if self.command == "OPTIONS" and route.cors and self.headers.get("Origin"):
                return self._preflight(route)
            if self.command not in route.methods:
                raise HttpError(405, {"error": "method not allowed", "allow": list(route.methods)},
                                (("Allow", ", ".join(route.methods)),))
            self._admit(route)
            route.serve(self)
        except HttpError as error:
            if error.close or (not self._body_consumed and declares_body(self.headers)):
                # Whatever body is left would be parsed as the next request; drop the connection.
                self.close_connection = True
            self.respond(error.status, error.body, extra_headers=error.headers, close=error.close)
        finally:
            REQUEST_ID.reset(request_context)
            self.leave_in_flight()
            services.metrics.inc("ccd_http_requests_total", path=path if route is not None else "other")
            services.metrics.inc("ccd_http_request_seconds_total", time.perf_counter() - started)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _route

    def do_HEAD(self) -> None:
        self.close_connection = True  # our error bodies would desync a HEAD keep-alive
        self._route()

    def _admit(self, route: Route) -> None:
        """The auth decision (the Host and Origin defences, then credentials where the route
        asks for them), then the API version where the route asks for it."""
        services = self.server.services
        authenticator = services.authenticator
        denied = authenticator.browser_check(self.conn, self.headers.get("Host"), self.headers.get("Origin"))
        if denied is None and route.needs_credentials(services.unauthenticated_metrics):
            denied = authenticator.check(self.conn, self.headers.get("Authorization"), self._client_kind())
        if denied is not None:
            error = refusal(denied)
            services.metrics.inc("ccd_auth_denied_total", status=str(error.status))
            raise error
        if route.needs_credentials(services.unauthenticated_metrics):
            self.server.gate.prove(self.request)
        if route.versioned:
            check_api_version(self.headers)

    def _preflight(self, route: Route) -> None:
        if self._cors_origin(route) is None:
            raise refusal(Denied(Refusal.ORIGIN_NOT_ALLOWED, "preflight from an origin not allowed"))
        self.respond_bytes(204, b"", None, extra_headers=PREFLIGHT_HEADERS)

    def _cors_origin(self, route: Route | None) -> str | None:
        return cors_origin(route, self.headers.get("Origin"), self.server.services.authenticator)

    def _client_kind(self) -> str | None:
        return clean_kind(self.headers.get("X-Client-Kind"))

    # -- what endpoints use ---------------------------------------------------------------
    def caller(self) -> Caller:
        """Who is calling: the client id presented (if well-formed) or a new one."""
        presented = self.headers.get("X-Client-Id")
        if presented is not None and not CLIENT_ID_RE.match(presented):
            presented = None
        caller = self.server.services.clients.resolve(presented, self._client_kind(), self.conn.transport,
                                                      self.conn.peer)
        self.client_id = caller.client_id
        return caller

    def read_body(self) -> bytes:
        self._body_consumed = True  # from here on, any failure closes the connection itself
        return read_request_body(self.rfile, self.headers, self.server.services.limits.max_body_bytes)

    def leave_in_flight(self) -> None:
        if self._in_flight:
            self._in_flight = False
            self.server.in_flight.leave()

    def respond(self, status: int, payload: Any, *, extra_headers: tuple[tuple[str, str], ...] = (),
                close: bool = False) -> None:
        body = encode_compact(payload).encode()
        self.respond_bytes(status, body, "application/json", extra_headers=extra_headers, close=close)

    def respond_bytes(self, status: int, body: bytes, content_type: str | None, *,
                      extra_headers: tuple[tuple[str, str], ...] = (), close: bool = False) -> None:
        headers = list(extra_headers)
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(len(body))))
        if self.client_id:
            headers.append(("X-Client-Id", self.client_id))
        if close or self.close_connection:
            headers.append(("Connection", "close"))
        self.write_head(status, headers, body)

    def write_head(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """Status line, headers and body in one write: no Nagle / delayed-ACK stall."""
        origin = self._cors_origin(self.route)
        if origin is not None:
            headers = cors_headers(origin) + headers
        if self.request_id:
            headers = [*headers, ("X-Request-Id", self.request_id)]
        self.wfile.write(encode_response(status, headers, body, self.http_1_0))
        self.server.services.metrics.inc("ccd_http_responses_total", status=str(status))
