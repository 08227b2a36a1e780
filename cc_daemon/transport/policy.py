"""What a route asks of a request before its handler runs, and how each refusal reads.

Owns: ``Route`` (a path's methods, its handler and its policy: credentials, the API
version header, CORS), the one mapping of auth outcomes to HTTP statuses, bodies and
headers, the API version refusal (426), the CORS decision with its preflight headers, and
the headers that confine the daemon's own page (``PAGE_HEADERS``).

Must not: hold state or do I/O. The request handler applies these decisions, each in one
place; auth decides who may proceed, this module only says it in HTTP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .. import API_VERSION, API_VERSION_HEADER
from ..auth import Authenticator, Denied, Refusal
from .framing import Headers, HttpError

if TYPE_CHECKING:
    from .handler import RequestHandler


class Auth(enum.Enum):
    """Whether a route checks credentials (a bearer token on TCP, the daemon's uid on a Unix
    socket). The Host and Origin defences apply to every route."""

    REQUIRED = "required"
    #: Probes and the scrape: open to whoever can connect when the daemon runs with
    #: ``--unauthenticated-metrics``.
    WAIVABLE = "waivable"
    #: The page's static files (``/ui/``): a browser cannot send a token with a navigation
    #: or a ``<script src>``, and they hold nothing secret. Every call they make needs one.
    PUBLIC = "public"


@dataclass(frozen=True)
class Route:
    """One endpoint: what it answers, and everything decided before its handler runs."""

    methods: tuple[str, ...]
    serve: Callable[[RequestHandler], None]
    auth: Auth
    #: The request must name the API version this daemon speaks (426 otherwise).
    versioned: bool
    #: Pages of allowed origins may call it: their preflights are answered (an OPTIONS
    #: with an Origin), and the answers carry the CORS headers.
    cors: bool

    def needs_credentials(self, unauthenticated_metrics: bool) -> bool:
        return self.auth is Auth.REQUIRED or (self.auth is Auth.WAIVABLE and not unauthenticated_metrics)


# -- auth outcomes on the wire --------------------------------------------------------------
#: How each kind of auth refusal reads on the wire: its status and JSON body. A missing and
#: a wrong token read the same, so a caller learns nothing about which part was wrong; a
#: rotated one reads differently, because its holder had the token and only needs to read
#: the token file again (the answer names no token).
REFUSALS: dict[Refusal, tuple[int, dict[str, Any]]] = {
    Refusal.MISSING_TOKEN: (401, {"error": "unauthenticated"}),
    Refusal.WRONG_TOKEN: (401, {"error": "unauthenticated"}),
    Refusal.TOKEN_ROTATED: (401, {"error": "token rotated"}),
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


# -- the API version ------------------------------------------------------------------------
def check_api_version(headers: Headers) -> None:
    got = headers.get(API_VERSION_HEADER)
    if got != API_VERSION:
        raise HttpError(426, {"error": "api_version_mismatch", "expected": API_VERSION, "got": got,
                              "header": API_VERSION_HEADER},
                        # RFC 9110 asks a 426 to name what to upgrade to.
                        (("Upgrade", f"{API_VERSION_HEADER}/{API_VERSION}"),))


# -- CORS -----------------------------------------------------------------------------------
PREFLIGHT_HEADERS = (
    ("Access-Control-Allow-Methods", "GET, POST"),
    ("Access-Control-Allow-Headers",
     f"Authorization, Content-Type, {API_VERSION_HEADER}, X-Client-Id, X-Client-Kind, Last-Event-ID"),
    ("Access-Control-Max-Age", "600"),
)


def cors_origin(route: Route | None, origin: str | None, authenticator: Authenticator) -> str | None:
    """The CORS decision: the origin whose page may read this answer, or None.

    Answers that come from no route (404, a malformed request) carry the CORS headers too,
    so that an allowed page can read why it was refused.
    """
    if origin and (route is None or route.cors) and authenticator.origin_allowed(origin):
        return origin
    return None


def cors_headers(origin: str) -> list[tuple[str, str]]:
    """The headers that let a page of ``origin`` read an answer (and our client id)."""
    return [("Access-Control-Allow-Origin", origin), ("Access-Control-Expose-Headers", "X-Client-Id, X-Request-Id"),
            ("Vary", "Origin")]


# -- the page -------------------------------------------------------------------------------
#: What every file of the page (``/ui/``) is served with. The page runs only its own files:
#: no inline script or style (an injected ``<script>`` or ``style=`` does nothing), no other
#: origin to load from or send to, no plugins, no ``<base>`` or form posts elsewhere, and no
#: other site may frame it (clickjacking the Approve button). ``no-referrer`` and the token
#: in the fragment keep the token out of every request line and ``Referer``.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                           "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors for browsers that predate it
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-cache"),  # revalidate: a daemon upgrade must not run yesterday's script
)
