"""The endpoints, and the route table that maps paths to them.

Owns: ``ROUTES``, every path with its methods, its handler and its policy (a new endpoint
is one entry there); what each path answers: /rpc (the body to the JSON-RPC dispatcher),
/events (the SSE response head, then the stream), /healthz, /readyz and /metrics (JSON or
the Prometheus text format, as ``Accept`` prefers), and /ui/ (the web workbench's files).

Must not: parse HTTP, or decide auth, the API version or CORS: the request handler applies
a route's policy before calling its handler. It reaches services through ``Services``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from .. import __version__, webui
from ..events import EventFilter
from .framing import Headers, HttpError
from .policy import PAGE_HEADERS, Auth, Route
from .sse import SseWriter

if TYPE_CHECKING:
    from .handler import RequestHandler

log = logging.getLogger("cc_daemon.transport")


def serve_rpc(request: RequestHandler) -> None:
    caller = request.caller()
    body = request.read_body()
    request.server.reaper.disarm(request)  # the deadline bounds reading the request, not answering it
    reply = request.server.services.dispatcher.handle(body, caller)
    request.respond_bytes(reply.status, reply.body, "application/json" if reply.body else None)


def serve_events(request: RequestHandler) -> None:
    server = request.server
    services = server.services
    since, event_filter = event_request(request.path, request.headers)
    caller = request.caller()
    server.reaper.disarm(request)  # a stream lives as long as its reader wants
    request.leave_in_flight()  # a stream is not a request that shutdown should wait for
    chunked = not request.http_1_0
    headers = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
               ("X-Accel-Buffering", "no"), ("X-Client-Id", caller.client_id)]
    headers.append(("Transfer-Encoding", "chunked") if chunked else ("Connection", "close"))
    subscription = services.bus.subscribe(since, event_filter)
    subscription.tag = request.conn
    writer = SseWriter(request.wfile, request.connection, chunked, caller)
    try:
        request.write_head(200, headers)
        writer.send(f"retry: {services.limits.retry_ms}\n\n")
        server.live_tail.follow(subscription, writer)
    except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError) as exc:
        log.debug("event stream to %s ended: %s", request.conn.peer, exc)
    finally:
        subscription.close()
        request.close_connection = True


def event_request(target: str, headers: Headers) -> tuple[int | None, EventFilter]:
    """Where a stream starts (``Last-Event-ID`` or ``?since=``) and which events it carries."""
    query = parse_qs(urlsplit(target).query)
    since_text = headers.get("Last-Event-ID") or first(query.get("since"))
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


def first(values: list[str] | None) -> str | None:
    return values[0] if values else None


def serve_health(request: RequestHandler) -> None:
    request.respond(200, {"status": "ok", "version": __version__, **request.server.services.metrics.health()})


def serve_readiness(request: RequestHandler) -> None:
    ready, detail = request.server.services.readiness()
    request.respond(200 if ready else 503, {"ready": ready, **detail})


def serve_metrics(request: RequestHandler) -> None:
    metrics = request.server.services.metrics
    vary = (("Vary", "Accept"),)
    if wants_exposition(request.headers.get("Accept")):
        request.respond_bytes(200, metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8",
                              extra_headers=vary)
    else:
        request.respond(200, metrics.summary(), extra_headers=vary)


#: What Prometheus asks for (OpenMetrics first, then the text format): both get the text
#: format 0.0.4, which Prometheus reads whatever it listed first.
EXPOSITION_TYPES = frozenset({"text/plain", "application/openmetrics-text"})


def wants_exposition(accept: str | None) -> bool:
    """Whether ``Accept`` prefers the exposition format to JSON. JSON is the default (no header,
    ``*/*``): the reference's clients read ``/metrics`` as JSON and send no ``Accept``."""
    exposition = as_json = 0.0  # the best quality each is asked for with
    for item in (accept or "").split(","):
        media, *parameters = (part.strip().lower() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media in EXPOSITION_TYPES:
            exposition = max(exposition, quality)
        elif media == "application/json":
            as_json = max(as_json, quality)
    return exposition > as_json


def serve_page(request: RequestHandler) -> None:
    path = urlsplit(request.path).path
    name = path.removeprefix(PAGE_PREFIX) or webui.INDEX
    body, media_type = webui.asset(name)
    request.respond_bytes(200, body, media_type, extra_headers=PAGE_HEADERS)


def redirect_to_page(request: RequestHandler) -> None:
    request.respond_bytes(308, b"", None, extra_headers=(("Location", PAGE_PREFIX),))


PAGE_PREFIX = "/ui/"
PAGE = Route(("GET",), serve_page, Auth.PUBLIC, versioned=False, cors=False)

ROUTES: dict[str, Route] = {
    "/rpc": Route(("POST",), serve_rpc, Auth.REQUIRED, versioned=True, cors=True),
    "/events": Route(("GET",), serve_events, Auth.REQUIRED, versioned=True, cors=True),
    "/healthz": Route(("GET",), serve_health, Auth.WAIVABLE, versioned=False, cors=True),
    "/readyz": Route(("GET",), serve_readiness, Auth.WAIVABLE, versioned=False, cors=True),
    "/metrics": Route(("GET",), serve_metrics, Auth.WAIVABLE, versioned=False, cors=True),
    "/ui": Route(("GET",), redirect_to_page, Auth.PUBLIC, versioned=False, cors=False),
    PAGE_PREFIX: PAGE,
    **{PAGE_PREFIX + name: PAGE for name in webui.ASSETS},
}
