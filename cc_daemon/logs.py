"""How the daemon's log lines look, and the request each belongs to.

Owns: the request id (minted per HTTP request, kept in a context variable so that every log
line written while serving it carries it, whichever module writes it), the two line formats
(``text``: ``2026-12-04 01:02:03,456 INFO cc_daemon.rpc [req 3f2a9c01b7de]: ...``, and
``json``: one object per line with ``ts``, ``level``, ``logger``, ``msg``, ``request_id``
and ``exc``), and putting them on a handler. The request id also goes back to the client
(``X-Request-Id``) and into every -32603 error's ``data``, so a user can match an error to
its log lines.

Must not: decide what is logged or at which level (each module does), or log user content:
callers pass method names, ids and outcomes, never params or tokens.
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import secrets
from datetime import datetime, timezone

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

#: The request being served on this thread (``None`` outside any request: start-up, timers).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("cc_daemon_request_id", default=None)


#: Request ids need to be unique, not unguessable (the client is told its own), so they come
#: from a Mersenne twister seeded once from the OS: ``secrets`` asks the kernel on every call,
#: and that system call releases the GIL, which with 16 keep-alive clients cost ~30 us of CPU
#: and doubled the median latency of every call (bench, rpc at 16 clients).
_IDS = random.Random(secrets.randbits(64))


def new_request_id() -> str:
    """12 hex digits: unique enough to find in a log, and derived from nothing secret."""
    return f"{_IDS.getrandbits(48):012x}"


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request it was written for (``request_id``, or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request = f" [req {request_id}]" if request_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: a traceback is a field, never lines of its own."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def prepare(handler: logging.Handler, log_format: str, level: str) -> logging.Handler:
    """``handler`` writing lines of ``log_format`` at ``level`` and above, each with its request."""
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler.setLevel(getattr(logging, level.upper()))
    return handler
