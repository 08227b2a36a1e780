"""HTTP/1.1 framing: reading a request's headers and body, writing a response's head.

Owns: the request header parser and its limits, Content-Length and chunked request bodies
(with the body size limit), the HTTP version of a request line, the status line and the
headers every response carries, and ``HttpError``, the answer a request gets instead of
proceeding.

Must not: know about routes, auth or events; it reads from and encodes for whatever file
objects it is given, and never writes to a socket itself.
"""

from __future__ import annotations

import http
import json
import re
from typing import Any

from .. import API_VERSION, API_VERSION_HEADER, __version__

SERVER_VERSION = f"cc_daemon/{__version__}"


class HttpError(Exception):
    """An answer to give instead of proceeding: a status, a JSON body, extra headers, and
    whether the connection must close after it (its input can no longer be trusted)."""

    def __init__(self, status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = (),
                 close: bool = False):
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.headers = headers
        self.close = close


# -- request headers ----------------------------------------------------------------------
#: The stdlib's limits (``http.client``): longest header line, most header lines per request.
MAX_HEADER_LINE = 65536
MAX_HEADER_LINES = 100
#: A field line: a name of visible characters other than ':' (the email parser's rule).
FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]*:")
HEADERS_END = (b"\r\n", b"\n", b"")


class IncompleteRequest(Exception):
    """The stream ended before the blank line that ends a request's headers: the peer went
    away, or the request deadline cut it off. There is no request to route or to judge."""


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
    nor a continuation ends the fields (the rest is read and ignored). Unlike it, the end of
    the stream does not end the fields: it raises ``IncompleteRequest``."""
    fields: dict[str, str] = {}
    folding: str | None = None  # the field a continuation line would extend
    ignoring = False
    for count in range(1, MAX_HEADER_LINES + 2):
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise HeadersTooLarge("Line too long", "header line")
        if count > MAX_HEADER_LINES:
            raise HeadersTooLarge("Too many headers", f"got more than {MAX_HEADER_LINES} headers")
        if not line.endswith(b"\n"):  # shorter than the limit and no end of line: the end of the stream
            raise IncompleteRequest
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
            elif name in LISTED_FIELDS:  # every value counts: the body reader judges them all
                fields[name] = fields[name].rstrip("\r\n") + ", " + text[match.end():].lstrip(" \t")
        elif text[0] in " \t":
            if folding is not None:
                fields[folding] += text
        else:
            ignoring = True
    return Headers({name: value.rstrip("\r\n") for name, value in fields.items()})


#: Fields whose repeated lines are kept as one comma-separated list (RFC 9110 5.3) instead of
#: the first line winning: two Content-Length lines that disagree must be refused, not
#: resolved by picking one (RFC 9112 6.3, a request-smuggling hazard).
LISTED_FIELDS = frozenset({"content-length", "transfer-encoding"})


def http_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of ``HTTP/major.minor``, or None when it is not one (RFC 2145 rules)."""
    if not text.startswith("HTTP/"):
        return None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(part.isdecimal() and len(part) <= 10 for part in parts):
        return None
    return int(parts[0]), int(parts[1])


# -- request bodies -----------------------------------------------------------------------
#: A Content-Length (RFC 9110 8.6) and a chunk size (RFC 9112 7.1): digits only. int() also
#: takes "-1", "+5" and "1_0", and rfile.read(-1) would read to the end of the stream.
CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,19}")
CHUNK_SIZE_RE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def declares_body(headers: Headers) -> bool:
    """True when the request says a body follows its headers."""
    return bool(headers.get("Transfer-Encoding") or headers.get("Content-Length", "0").strip() != "0")


def read_request_body(rfile, headers: Headers, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes. A failure raises an ``HttpError`` that
    closes the connection: what is left of the body cannot be told from the next request."""
    length_text = headers.get("Content-Length")
    if headers.get("Transfer-Encoding") is not None:
        # Both framings in one request is how smuggling starts: a proxy in front may have used
        # the other one (RFC 9112 6.1 lets a server refuse it, and it must close either way).
        if length_text is not None:
            raise bad_request("both Transfer-Encoding and Content-Length")
        if headers.get("Transfer-Encoding").strip().lower() != "chunked":
            raise bad_request("the only Transfer-Encoding accepted is chunked")
        return read_chunked_body(rfile, limit)
    if length_text is None:
        return b""
    values = {value.strip() for value in length_text.split(",")}
    if len(values) > 1:
        raise bad_request("conflicting Content-Length values")
    length_text = values.pop()
    if not CONTENT_LENGTH_RE.fullmatch(length_text):
        raise bad_request("Content-Length is not a number")
    length = int(length_text)
    if length > limit:
        raise payload_too_large(limit)
    body = rfile.read(length)
    if len(body) < length:
        raise bad_request("body shorter than Content-Length")
    return body


def read_chunked_body(rfile, limit: int) -> bytes:
    """A chunked body (RFC 9112 7.1), at most ``limit`` bytes; trailers are read and ignored."""
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(1024)
        size_text = line.split(b";", 1)[0].strip()
        if not CHUNK_SIZE_RE.fullmatch(size_text):
            raise bad_request("malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise payload_too_large(limit)
        parts.append(rfile.read(size))
        rfile.readline(3)
    while rfile.readline(1024) not in HEADERS_END:
        pass  # trailers: read and ignored
    return b"".join(parts)


def bad_request(detail: str) -> HttpError:
    """A 400 that closes the connection: the rest of the stream cannot be framed."""
    return HttpError(400, {"error": "bad request", "detail": detail}, close=True)


def payload_too_large(limit: int) -> HttpError:
    return HttpError(413, {"error": "payload too large", "limit_bytes": limit}, close=True)


# -- responses ----------------------------------------------------------------------------
def response_head(status: int, version: str = "HTTP/1.1") -> str:
    """The status line and the headers every response carries."""
    phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
    return f"{version} {status} {phrase}\r\n{API_VERSION_HEADER}: {API_VERSION}\r\nServer: {SERVER_VERSION}"


RESPONSE_HEADS = {status.value: response_head(status.value) for status in http.HTTPStatus}
#: An HTTP/1.0 request is answered in HTTP/1.0: close-delimited, never chunked. (RFC 9110
#: 6.2 would allow an HTTP/1.1 status line, but clients written for HTTP/1.0 servers, the
#: reference's among them, read "HTTP/1.1" as a promise of framing they do not decode.)
HTTP_1_0_HEADS = {status.value: response_head(status.value, "HTTP/1.0") for status in http.HTTPStatus}
#: ``json.dumps`` with separators builds a new encoder per call; this one is built once.
encode_compact = json.JSONEncoder(separators=(",", ":")).encode


def encode_response(status: int, headers: list[tuple[str, str]], body: bytes = b"",
                    http_1_0: bool = False) -> bytes:
    """Status line, headers and body as one buffer, to go out in one write."""
    heads = HTTP_1_0_HEADS if http_1_0 else RESPONSE_HEADS
    lines = [heads.get(status) or response_head(status, "HTTP/1.0" if http_1_0 else "HTTP/1.1")]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
