"""The runtime protocol, daemon side (RFC 0004): one JSON object per line over stdin/stdout.

Owns: the JSON Schema of every message in both directions, encoding the daemon's messages,
decoding and validating a runtime's, and cutting a runtime's stdout into bounded lines.
Anything a runtime writes that is not a valid message becomes a ``ProtocolError`` (or an
``Oversized`` marker) for the caller to report; nothing here raises anything else on input.

Must not: start processes, publish events or hold session state; it is pure data handling.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..json_values import find_bad_value

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

PROTOCOL_VERSION = 1
#: Longest line a runtime may write; longer ones are dropped and reported.
MAX_LINE_BYTES = 1 << 20
#: Longest ``text`` / ``output`` string in one message: runtimes split longer output into chunks.
MAX_CHUNK_CHARS = 65536

_ID = {"type": "string", "minLength": 1, "maxLength": 128}
_TEXT = {"type": "string", "maxLength": MAX_CHUNK_CHARS}


def _message(type_name: str, properties: dict[str, Any], required: tuple[str, ...] = (),
             strict: bool = True) -> dict[str, Any]:
    """The schema of one message. Runtime messages are not ``strict``: unknown fields are
    ignored, so a runtime written against a later minor revision still works."""
    return {
        "type": "object",
        "properties": {"type": {"const": type_name}, **properties},
        "required": ["type", *required],
        "additionalProperties": not strict,
    }


#: What the daemon writes to a runtime's stdin.
TO_RUNTIME: dict[str, dict[str, Any]] = {
    "init": _message("init", {
        "protocol": {"const": PROTOCOL_VERSION},
        "session_id": _ID,
        "cwd": {"type": "string", "minLength": 1},
        "mode": {"enum": ["interactive", "unattended"]},
        "args": {"type": "array", "items": {"type": "string"}},
        "resume_token": {"type": ["string", "null"], "maxLength": 4096},
    }, ("protocol", "session_id", "cwd", "mode", "args", "resume_token")),
    "turn": _message("turn", {"turn_id": _ID, "text": {"type": "string"}}, ("turn_id", "text")),
    "cancel": _message("cancel", {"turn_id": _ID, "reason": {"type": "string"}}, ("turn_id", "reason")),
    "permission_response": _message("permission_response", {
        "turn_id": _ID, "request_id": _ID, "approve": {"type": "boolean"}, "reason": {"type": "string"},
    }, ("turn_id", "request_id", "approve", "reason")),
    "stop": _message("stop", {"reason": {"type": "string"}}, ("reason",)),
}

_USAGE = {
    "type": "object",
    "properties": {
        "input_tokens": {"type": "integer", "minimum": 0},
        "output_tokens": {"type": "integer", "minimum": 0},
        "cache_read_input_tokens": {"type": "integer", "minimum": 0},
        "cache_creation_input_tokens": {"type": "integer", "minimum": 0},
        "cost_usd": {"type": "number", "minimum": 0},
        "duration_ms": {"type": "number", "minimum": 0},
    },
    "additionalProperties": {"type": ["number", "string", "boolean", "null"]},
}

#: What a runtime writes to its stdout.
FROM_RUNTIME: dict[str, dict[str, Any]] = {
    "ready": _message("ready", {
        "protocol": {"const": PROTOCOL_VERSION},
        "runtime": {"type": "string", "maxLength": 200},
        "version": {"type": "string", "maxLength": 200},
    }, ("protocol",), strict=False),
    "text": _message("text", {"turn_id": _ID, "text": _TEXT}, ("turn_id", "text"), strict=False),
    "tool_start": _message("tool_start", {
        "turn_id": _ID, "tool_use_id": _ID, "tool": {"type": "string", "minLength": 1, "maxLength": 200},
        "input": {},
    }, ("turn_id", "tool_use_id", "tool", "input"), strict=False),
    "tool_end": _message("tool_end", {
        "turn_id": _ID, "tool_use_id": _ID, "ok": {"type": "boolean"}, "output": _TEXT,
    }, ("turn_id", "tool_use_id", "ok"), strict=False),
    "permission_request": _message("permission_request", {
        "turn_id": _ID, "request_id": _ID, "tool": {"type": "string", "minLength": 1, "maxLength": 200},
        "input": {}, "rationale": {"type": ["string", "null"], "maxLength": 10000},
    }, ("turn_id", "request_id", "tool", "input"), strict=False),
    "permission_withdrawn": _message("permission_withdrawn", {
        "turn_id": _ID, "request_id": _ID, "reason": {"type": "string", "maxLength": 10000},
    }, ("turn_id", "request_id"), strict=False),
    "turn_done": _message("turn_done", {
        "turn_id": _ID, "status": {"enum": ["completed", "cancelled", "failed"]}, "usage": _USAGE,
        "resume_token": {"type": "string", "maxLength": 4096},
    }, ("turn_id", "status"), strict=False),
    "error": _message("error", {"turn_id": _ID, "message": {"type": "string", "maxLength": 10000}},
                      ("message",), strict=False),
    "log": _message("log", {"level": {"enum": ["debug", "info", "warning", "error"]},
                            "message": {"type": "string", "maxLength": 10000}},
                    ("level", "message"), strict=False),
}


def _validators(schemas: dict[str, dict[str, Any]]) -> dict[str, Draft202012Validator]:
    from jsonschema import Draft202012Validator

    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    return {name: Draft202012Validator(schema) for name, schema in schemas.items()}


# Checked and built at the first message, not at import: jsonschema and the schema checks
# cost ~100 ms and ~3 MB, most of the daemon's cold start, and a daemon that never runs a
# session never needs them. Two threads racing here both build the same validators.
@functools.cache
def _to_runtime_validators() -> dict[str, Draft202012Validator]:
    return _validators(TO_RUNTIME)


@functools.cache
def _from_runtime_validators() -> dict[str, Draft202012Validator]:
    return _validators(FROM_RUNTIME)


class ProtocolError(ValueError):
    """A runtime wrote something that is not a valid message; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Oversized:
    """A line longer than the limit was dropped; ``length`` bytes of it were seen."""

    length: int


def encode(message: dict[str, Any]) -> bytes:
    """A daemon-to-runtime message as one line. Our own messages must be valid: a schema
    violation here is a daemon bug, so it raises ``ValueError`` instead of sending it."""
    validator = _to_runtime_validators().get(message.get("type", ""))
    if validator is None:
        raise ValueError(f"not a daemon-to-runtime message: {message.get('type')!r}")
    from jsonschema.exceptions import best_match  # loaded with the validators

    error = best_match(validator.iter_errors(message))
    if error is not None:
        raise ValueError(f"invalid {message['type']} message: {error.message}")
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode(line: bytes) -> dict[str, Any]:
    """A runtime-to-daemon message from one line (without its newline)."""
    try:
        message = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ProtocolError("not_utf8", "the line is not valid UTF-8") from None
    except ValueError as exc:
        raise ProtocolError("not_json", str(exc)[:200]) from None
    except RecursionError:
        raise ProtocolError("not_json", "nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("not_an_object", f"expected a JSON object, got {type(message).__name__}")
    # What JSON can say but the daemon cannot pass on (to an event, a reply, another runtime),
    # refused here as a client's is at the RPC boundary.
    bad = find_bad_value(message)
    if bad is not None:
        raise ProtocolError("bad_value", f"{bad.field}: {bad.reason}")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in FROM_RUNTIME:
        raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:100]!r}")
    validator = _from_runtime_validators()[kind]
    from jsonschema.exceptions import best_match  # loaded with the validators

    error = best_match(validator.iter_errors(message))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(message)"
        raise ProtocolError("invalid_message", f"{kind}: {where}: {error.message[:300]}")
    return message


class LineSplitter:
    """Cuts a byte stream into lines of at most ``max_bytes``, without ever holding more.

    A longer line is discarded as it streams in and reported once, as ``Oversized``, when
    its newline arrives (or at end of stream).
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES):
        self._max = max_bytes
        self._buffer = bytearray()
        self._dropped: int | None = None  # bytes of the current line discarded so far

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        start = 0
        while start <= len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            self._take(data[start:end])
            if newline < 0:
                break
            out.append(self._complete())
            start = newline + 1
        return out

    def finish(self) -> list[bytes | Oversized]:
        """What remains at end of stream: a last line that had no newline."""
        if self._dropped is None and not self._buffer:
            return []
        return [self._complete()]

    def _take(self, piece: bytes) -> None:
        if self._dropped is None and len(self._buffer) + len(piece) <= self._max:
            self._buffer += piece
        else:
            self._dropped = (self._dropped if self._dropped is not None else len(self._buffer)) + len(piece)
            self._buffer.clear()

    def _complete(self) -> bytes | Oversized:
        line: bytes | Oversized = bytes(self._buffer) if self._dropped is None else Oversized(self._dropped)
        self._buffer.clear()
        self._dropped = None
        return line
