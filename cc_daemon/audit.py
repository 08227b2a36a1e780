"""The audit log: one compact JSON line per authentication decision, in ``logs/auth.jsonl``.

Owns: the line's fields and the file's rotation by size.

Must not: decide anything (``auth`` does), or write a token, a client id or a request body:
every field it is given is a fixed text, an address, a uid or a validated client kind.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .storage import PrivateRotatingFileHandler


class AuditLog:
    """One compact JSON line per authentication decision, rotated by size."""

    def __init__(self, path: Path | None, max_bytes: int = 10 * 1024 * 1024, backups: int = 5):
        self.path = path
        self._handler: logging.Handler | None = None
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._handler = PrivateRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                       encoding="utf-8")

    def record(self, *, transport: str, outcome: str, peer: str, reason: str,
               uid: int | None = None, client_kind: str | None = None) -> None:
        if self._handler is None:
            return
        entry = {"ts": time.time(), "transport": transport, "outcome": outcome, "peer": peer,
                 "reason": reason, "uid": uid}
        if client_kind is not None:
            entry["client_kind"] = client_kind
        line = json.dumps(entry, separators=(",", ":"))
        self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
